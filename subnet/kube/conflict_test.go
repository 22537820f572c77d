package kube

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/subnet"
	"github.com/overlayd/overlayd/test/controlplane"
)

// overlaydAnnotations are valid annotations as an overlayd agent writes them.
func overlaydAnnotations(publicIP, mac string) map[string]string {
	k, _ := newKeys(DefaultAnnotationPrefix)
	net := &netconf.Config{EnableIPv4: true}
	return k.encode(net, vxlanAttrs(publicIP, mac))
}

// TestPodCIDRConflictingClaims: a Node claiming another node's podCIDR (or
// part of it) is refused, reported with a log line, a count and an Event;
// the rightful holder stays in every snapshot before, during and after the
// claim; an agent whose own Node is the claimant, or lies outside Network,
// refuses to run.
func TestPodCIDRConflictingClaims(t *testing.T) {
	c := startCluster(t, controlplane.Options{})
	net := mustNet(t, `{"Network": "10.244.0.0/16"}`)
	ctx := context.Background()

	nodeB := createNode(t, c.admin, "node-b", []string{"10.244.2.0/24"}, nil)
	createNode(t, c.admin, "node-a", []string{"10.244.1.0/24"}, nil)
	attrsA, attrsB := vxlanAttrs("198.18.0.11", "0a:58:0a:f4:01:01"), vxlanAttrs("198.18.0.12", "0a:58:0a:f4:02:01")
	b := startAgent(t, Config{Client: c.admin, NodeName: "node-b", Net: net})
	b.acquire(t, attrsB)
	a := startAgent(t, Config{Client: c.admin, NodeName: "node-a", Net: net})
	a.acquire(t, attrsA)
	wantB := subnet.Lease{Node: "node-b", Subnet: netip.MustParsePrefix("10.244.2.0/24"), Attrs: attrsB}
	wantA := subnet.Lease{Node: "node-a", Subnet: netip.MustParsePrefix("10.244.1.0/24"), Attrs: attrsA}
	onlyPeer := func(x *agent, want subnet.Lease) func() (bool, string) {
		return func() (bool, string) {
			got := x.peerMap()
			return len(got) == 1 && leaseEqual(got[want.Node], want), formatPeers(got)
		}
	}
	waitFor(t, "node-a to see node-b (before)", onlyPeer(a, wantB))

	// From here on, every snapshot node-a resolves must hold node-b intact.
	var mu sync.Mutex
	var snapshots int
	var violations []string
	stop := make(chan struct{})
	monitorDone := make(chan struct{})
	go func() {
		defer close(monitorDone)
		for {
			_, wake := a.state()
			select {
			case <-wake: // every resolution node-a makes
				got := a.peerMap()
				mu.Lock()
				snapshots++
				if !leaseEqual(got["node-b"], wantB) {
					violations = append(violations, formatPeers(got))
				}
				mu.Unlock()
			case <-stop:
				return
			}
		}
	}()

	// The claimants come strictly later than node-b (creation times have
	// one-second resolution); their names sort first, so it is time that
	// decides, not the name.
	waitFor(t, "the clock to pass node-b's creation second", func() (bool, string) {
		return time.Now().Truncate(time.Second).After(nodeB.CreationTimestamp.Time), ""
	})
	overlaps := skippedCount(t, reasonOverlap)
	createNode(t, c.admin, "a-rogue", []string{"10.244.2.0/24"}, overlaydAnnotations("198.18.0.66", "0a:58:0a:f4:66:01"))
	createNode(t, c.admin, "a-rogue-wide", []string{"10.244.0.0/20"}, overlaydAnnotations("198.18.0.67", "0a:58:0a:f4:67:01"))

	// During.
	for _, x := range []*agent{a, b} {
		waitFor(t, x.cfg.NodeName+" to refuse both claimants", func() (bool, string) {
			return len(skipLogs(x, "a-rogue")) == 1 && len(skipLogs(x, "a-rogue-wide")) == 1, "not yet logged"
		})
	}
	detail := skipLogs(a, "a-rogue")[0].ContextMap()
	if detail["reason"] != reasonOverlap || !strings.Contains(detail["detail"].(string), "subnet 10.244.2.0/24 overlaps 10.244.2.0/24 held by node node-b") {
		t.Errorf("skip log for a-rogue: %v", detail)
	}
	waitFor(t, "node-a to keep node-b (during)", onlyPeer(a, wantB))
	waitFor(t, "node-b to keep node-a (during)", onlyPeer(b, wantA))
	if got := skippedCount(t, reasonOverlap) - overlaps; got != 4 {
		t.Errorf("overlap skips counted %v, want 4 (two claimants seen by two agents)", got)
	}
	// The holder's agent records an Event on the claimant.
	waitFor(t, "an Event on a-rogue", func() (bool, string) {
		for _, e := range nodeEvents(t, c.admin, "a-rogue", "SubnetConflict") {
			if e.Source.Component == "overlayd" && e.Source.Host == "node-b" && e.Type == "Warning" &&
				strings.Contains(e.Message, "10.244.2.0/24") && strings.Contains(e.Message, "node node-b keeps it") {
				return true, ""
			}
		}
		return false, "no matching event"
	})

	// An agent whose own Node is the claimant refuses to run, and says so on its Node.
	createNode(t, c.admin, "c-self", []string{"10.244.2.0/24"}, nil)
	cAgent := startAgent(t, Config{Client: c.admin, NodeName: "c-self", Net: net})
	_, err := cAgent.Acquire(ctx, vxlanAttrs("198.18.0.13", "0a:58:0a:f4:03:01"))
	if err == nil || !strings.Contains(err.Error(), "node c-self may not use its podCIDR") ||
		!strings.Contains(err.Error(), "overlaps 10.244.2.0/24 held by node node-b") {
		t.Errorf("Acquire on the claimant: %v", err)
	}
	waitFor(t, "an Event on c-self", func() (bool, string) {
		for _, e := range nodeEvents(t, c.admin, "c-self", "SubnetConflict") {
			if e.Source.Host == "c-self" && strings.Contains(e.Message, "refuses to run") {
				return true, ""
			}
		}
		return false, "no matching event"
	})
	createNode(t, c.admin, "d-outside", []string{"10.99.0.0/24"}, nil)
	dAgent := startAgent(t, Config{Client: c.admin, NodeName: "d-outside", Net: net})
	_, err = dAgent.Acquire(ctx, vxlanAttrs("198.18.0.14", "0a:58:0a:f4:04:01"))
	if err == nil || !strings.Contains(err.Error(), "subnet 10.99.0.0/24 lies outside Network 10.244.0.0/16") {
		t.Errorf("Acquire outside Network: %v", err)
	}

	// After: the claimants go away; nothing of node-b is lost.
	for _, n := range []string{"a-rogue", "a-rogue-wide", "c-self", "d-outside"} {
		if err := c.admin.CoreV1().Nodes().Delete(ctx, n, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, x := range []*agent{a, b} {
		waitFor(t, x.cfg.NodeName+" to resolve without the claimants", func() (bool, string) {
			res, _ := x.state()
			_, rogue := res.skipped["a-rogue"]
			_, wide := res.skipped["a-rogue-wide"]
			return !rogue && !wide, "still skipped"
		})
	}
	waitFor(t, "node-a to keep node-b (after)", onlyPeer(a, wantB))
	waitFor(t, "node-b to keep node-a (after)", onlyPeer(b, wantA))

	close(stop)
	<-monitorDone
	mu.Lock()
	defer mu.Unlock()
	if len(violations) > 0 {
		t.Errorf("node-a resolved %d snapshots without node-b intact: %v", len(violations), violations)
	}
	if snapshots == 0 {
		t.Error("node-a resolved no snapshot while the claimants came and went")
	}
	t.Logf("node-a resolved %d snapshots during the conflict, each with node-b intact", snapshots)
}
