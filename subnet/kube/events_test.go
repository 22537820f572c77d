package kube

import (
	"context"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/overlayd/overlayd/test/controlplane"
)

// TestNodeEvents: events recorded with the restricted identity and the
// shipped RBAC land on the Node, where kubectl describe node shows them:
// the own Node's, and a Warning on another node from this node's agent.
func TestNodeEvents(t *testing.T) {
	c := startCluster(t, controlplane.Options{})
	applyRBAC(t, c.admin, loadRBAC(t))
	agent := clientFor(t, c.cp, "kube-system/overlayd")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ev := NewEvents(ctx, agent, "node-a")
	ev.Warning("DatapathFailed", "programming %s failed", "overlay.1")
	ev.Normal("NetConfApplied", "backend %s", "host-gw")
	ev.WarningOn("node-b", "SubnetConflict", "subnet %s: refused", "10.244.2.0/24")
	var none *Events // records nothing, and does not fail
	none.Warning("Ignored", "no recorder")
	none.WarningOn("node-b", "Ignored", "no recorder")

	admin := c.admin
	waitFor(t, "events on node-a", func() (bool, string) {
		list, err := admin.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=node-a"})
		if err != nil {
			return false, err.Error()
		}
		reasons := map[string]string{}
		for _, e := range list.Items {
			reasons[e.Reason] = e.Type + " " + e.Message
		}
		return reasons["DatapathFailed"] == "Warning programming overlay.1 failed" && reasons["NetConfApplied"] == "Normal backend host-gw", ""
	})
	waitFor(t, "the event on node-b", func() (bool, string) {
		for _, e := range nodeEvents(t, admin, "node-b", "SubnetConflict") {
			if e.Type == "Warning" && e.Message == "subnet 10.244.2.0/24: refused" && e.Source.Host == "node-a" {
				return true, ""
			}
		}
		return false, "no matching event"
	})
	if got := nodeEvents(t, admin, "node-b", "Ignored"); len(got) != 0 {
		t.Errorf("a nil Events recorded %d events", len(got))
	}
}
