package e2e

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	harness "github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/lab"
)

// TestWatchResumesAfterCompaction: node 1's agent loses the API server
// (lab.Node.CutAPI: its connections reset, new ones refused) while node 3 is deleted, node 4
// joins and etcd is compacted (Node watches are served by etcd here, so the
// compaction expires node 1's watch). When the API comes back, its watch
// resumes from a resource version that is gone ("too old") and the agent
// lists again: it
// flushes nothing that was right (a 100/s ping to node 2's pod loses
// nothing and no route of node 2's is removed) and converges on what
// changed meanwhile (node 3 gone, node 4 reachable), exactly as the leases
// say.
func TestWatchResumesAfterCompaction(t *testing.T) {
	hc := harness.New(t, harness.Options{
		// -v 4: client-go logs an expired watch at klog verbosity 4, and
		// only there (the reflector then lists again without an error).
		Prefix: labPrefix, Nodes: 4, NetConf: netConf("vxlan"), Overlayd: overlaydBin, Args: []string{"--resync-period", "10s", "-v", "4"},
		NoAgents: true, APIServerArgs: []string{"--watch-cache-sizes=nodes#0"},
	})
	c := &cluster{Cluster: hc, t: t, directRouting: map[string]bool{}}
	n1, n2, n3, n4 := c.node(0), c.node(1), c.node(2), c.node(3)
	for _, n := range []*lab.Node{n1, n2, n3} {
		if _, err := c.StartAgent(n); err != nil {
			t.Fatal(err)
		}
		c.waitReady(n)
		if _, err := c.AddPod(n, n.Name+"-p0"); err != nil {
			t.Fatal(err)
		}
	}
	c.requireFullMesh(c.Pods)
	leases := c.leases()
	pod1, pod2, pod3 := c.PodsOn(n1)[0], c.PodsOn(n2)[0], c.PodsOn(n3)[0]
	pinger, err := pod1.StartPinger(pod2.IP, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := pinger.WaitReceived(ctx, 20); err != nil {
		t.Fatal(err)
	}
	agent := c.Agents[n1.Name]
	logFrom := len(agent.Log())

	// Node 1 loses the API server: its watch connection is reset, and so is
	// every new one.
	if err := n1.CutAPI(); err != nil {
		t.Fatal(err)
	}
	restored := false
	defer func() {
		if !restored {
			n1.RestoreAPI()
		}
	}()

	// Meanwhile node 3 goes and node 4 comes.
	stopAgent(t, c, n3)
	if err := c.Admin.CoreV1().Nodes().Delete(ctx, n3.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartAgent(n4); err != nil {
		t.Fatal(err)
	}
	c.waitReady(n4)
	pod4, err := c.AddPod(n4, n4.Name+"-p0")
	if err != nil {
		t.Fatal(err)
	}
	c.Pods = slices.DeleteFunc(c.Pods, func(p *lab.Pod) bool { return p == pod3 })
	c.requireFullMesh([]*lab.Pod{pod2, pod4}) // node 2 saw both changes
	if hasRoute(t, n1, c.leases()[n4.Name].subnet.String()) || !hasRoute(t, n1, leases[n3.Name].subnet.String()) {
		t.Fatal("node 1 saw the changes although it could not reach the API server")
	}
	rev, err := c.CP.Compact(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("etcd compacted to revision %d while node 1 was cut off", rev)

	start := time.Now()
	if err := n1.RestoreAPI(); err != nil {
		t.Fatal(err)
	}
	restored = true
	if err := agent.WaitLog(ctx, "resourceVersion for the provided watch is too old"); err != nil {
		t.Fatalf("node 1's watch did not come back expired: %v", err)
	}
	if err := pod1.PingWithin(pod4.IP, 60*time.Second); err != nil {
		t.Fatalf("node 1 does not reach the node that joined while it was cut off: %v", err)
	}
	t.Logf("node 1 reached node 4 %s after the API came back", time.Since(start).Round(time.Millisecond))
	c.requireKernelStateMatchesLeases()
	c.requireFullMesh(c.Pods)
	if hasRoute(t, n1, leases[n3.Name].subnet.String()) {
		t.Errorf("node 1 still routes the subnet of the node deleted while it was cut off")
	}

	if err := pinger.WaitReceived(ctx, pinger.Stats().Received+30); err != nil {
		t.Fatal(err)
	}
	s := pinger.Stop()
	t.Logf("ping node 1 -> node 2 through the outage and the re-list: %s", s)
	if s.Lost != 0 {
		t.Errorf("%d pings to node 2's pod lost: the re-list flushed what was right", s.Lost)
	}
	sub2 := leases[n2.Name].subnet.String()
	for _, l := range kernelChanges(agent.Log()[logFrom:]) {
		if strings.Contains(l, "removed") && !strings.Contains(l, leases[n3.Name].subnet.String()) {
			t.Errorf("node 1 removed something besides node 3's state: %s", l)
		}
		if strings.Contains(l, sub2) {
			t.Errorf("node 1 touched node 2's state: %s", l)
		}
	}
}
