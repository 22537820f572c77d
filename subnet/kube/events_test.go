package kube

import (
	"context"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/overlayd/overlayd/test/controlplane"
)

// TestNodeEvents: events recorded with the restricted identity and the
// shipped RBAC land on the Node, where kubectl describe node shows them.
func TestNodeEvents(t *testing.T) {
	c := startCluster(t, controlplane.Options{})
	applyRBAC(t, c.admin, loadRBAC(t))
	agent := clientFor(t, c.cp, "kube-system/overlayd")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ev := NewEvents(ctx, agent, "node-a")
	ev.Warning("DatapathFailed", "programming %s failed", "overlay.1")
	ev.Normal("NetConfApplied", "backend %s", "host-gw")

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
}
