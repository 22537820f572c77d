package e2e

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/overlayd/overlayd/test/lab"
)

// TestVXLAN: three nodes, two pods each, full mesh over vxlan; the kernel
// state is exactly what the leases call for; whatever is removed by hand is
// put back without a restart; a node deleted from the API disappears from
// every peer.
func TestVXLAN(t *testing.T) {
	c := newCluster(t, clusterOptions{Nodes: 3, PodsPerNode: 2})
	c.requireFullMesh(c.pods)
	c.requireVXLANStateMatchesLeases()

	n1, n2 := c.node(0), c.node(1)
	peer := c.leases()[n2.Name]
	vtep := peer.subnet.Addr().String()
	run := func(n *lab.Node, argv ...string) {
		t.Helper()
		if out, err := n.Exec(context.Background(), argv...); err != nil {
			t.Fatalf("%v on %s: %v\n%s", argv, n.Name, err, out)
		}
	}
	repairs := []struct {
		name   string
		break_ func()
	}{
		{"peer route deleted", func() { run(n1, "ip", "route", "del", peer.subnet.String()) }},
		{"FDB entry deleted", func() {
			run(n1, "bridge", "fdb", "del", peer.vtepMAC, "dev", "overlay.1", "dst", peer.publicIP.String(), "self")
		}},
		{"neighbour entry deleted", func() { run(n1, "ip", "neigh", "del", vtep, "dev", "overlay.1") }},
		{"vxlan device deleted", func() { run(n1, "ip", "link", "del", "overlay.1") }},
		{"underlay link down and up", func() {
			run(n1, "ip", "link", "set", "eth0", "down")
			run(n1, "ip", "link", "set", "eth0", "up")
		}},
	}
	for _, r := range repairs {
		t.Run(r.name, func(t *testing.T) {
			before := metricValue(t, c, n1, "overlayd_repairs_total")
			r.break_()
			c.requireVXLANStateMatchesLeases()
			c.requireFullMesh(c.pods)
			if p := c.agents[n1.Name]; !p.Running() || p.Pid() == 0 {
				t.Fatalf("agent on %s is not the same running process", n1.Name)
			}
			if r.name != "underlay link down and up" {
				if after := metricValue(t, c, n1, "overlayd_repairs_total"); after <= before {
					t.Errorf("overlayd_repairs_total %v -> %v: repair not counted", before, after)
				}
			}
		})
	}

	t.Run("node deleted from the API", func(t *testing.T) {
		n3 := c.node(2)
		gone := c.leases()[n3.Name]
		if err := c.agents[n3.Name].Stop(); err != nil {
			t.Logf("stopping agent: %v\n%s", err, c.agents[n3.Name].Tail(3000))
		}
		if err := c.admin.CoreV1().Nodes().Delete(context.Background(), n3.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		c.requireVXLANStateMatchesLeases()
		for _, n := range c.lab.Nodes[:2] {
			for _, r := range overlaydRoutes(t, n) {
				if r.Dst == gone.subnet.String() {
					t.Errorf("%s still routes the deleted node's subnet: %+v", n.Name, r)
				}
			}
		}
		c.requireFullMesh(append(c.podsOn(n1), c.podsOn(n2)...))
	})
}

// TestVXLANDepartedPeerWhileDown: a peer that leaves while an agent is down
// is cleaned up when the agent starts, from what it finds in the kernel.
func TestVXLANDepartedPeerWhileDown(t *testing.T) {
	c := newCluster(t, clusterOptions{Nodes: 3})
	c.requireVXLANStateMatchesLeases()
	n1, n3 := c.node(0), c.node(2)
	gone := c.leases()[n3.Name]

	if err := c.agents[n1.Name].Stop(); err != nil {
		t.Fatalf("stopping agent: %v", err)
	}
	c.agents[n3.Name].Stop()
	if err := c.admin.CoreV1().Nodes().Delete(context.Background(), n3.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// The datapath outlived the agent: the departed peer's route is still there.
	if !hasRoute(t, n1, gone.subnet.String()) {
		t.Fatal("stopping the agent removed routes; the datapath must stay in place")
	}
	if err := c.agents[n1.Name].Start(); err != nil {
		t.Fatal(err)
	}
	c.waitReady(n1)
	eventually(t, 30*time.Second, "departed peer's route removed", func() (bool, string) {
		return !hasRoute(t, n1, gone.subnet.String()), fmt.Sprint(overlaydRoutes(t, n1))
	})
	c.requireVXLANStateMatchesLeases()
	c.requireFullMesh(append(c.podsOn(n1), c.podsOn(c.node(1))...))
}

func hasRoute(t *testing.T, n *lab.Node, dst string) bool {
	for _, r := range overlaydRoutes(t, n) {
		if r.Dst == dst {
			return true
		}
	}
	return false
}

// TestVXLANRestartLosesNothing: a continuous ping at 100/s between pods on
// two nodes loses no packet while the agents on both nodes are restarted,
// gracefully (SIGTERM) and abruptly (SIGKILL).
func TestVXLANRestartLosesNothing(t *testing.T) {
	c := newCluster(t, clusterOptions{Nodes: 2})
	c.requireFullMesh(c.pods)
	src, dst := c.podsOn(c.node(0))[0], c.podsOn(c.node(1))[0]
	pinger, err := src.StartPinger(dst.IP, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := pinger.WaitReceived(ctx, 20); err != nil {
		t.Fatalf("pinger: %v", err)
	}
	for _, step := range []struct {
		node int
		sig  syscall.Signal
	}{{0, syscall.SIGTERM}, {1, syscall.SIGTERM}, {0, syscall.SIGKILL}, {1, syscall.SIGKILL}} {
		n := c.node(step.node)
		restartAgent(t, c, n, step.sig)
	}
	received := pinger.Stats().Received
	if err := pinger.WaitReceived(ctx, received+50); err != nil {
		t.Fatalf("pinger after restarts: %v", err)
	}
	stats := pinger.Stop()
	t.Logf("ping across 4 agent restarts: %s", stats)
	if stats.Lost != 0 {
		t.Fatalf("lost %d of %d pings across agent restarts", stats.Lost, stats.Sent)
	}
}

// restartAgent stops the node's agent with sig, starts it again and waits
// until it is ready.
func restartAgent(t *testing.T, c *cluster, n *lab.Node, sig syscall.Signal) {
	t.Helper()
	p := c.agents[n.Name]
	if err := p.Signal(sig); err != nil {
		t.Fatalf("signalling agent on %s: %v", n.Name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p.Wait(ctx)
	if p.Running() {
		t.Fatalf("agent on %s did not exit on %v", n.Name, sig)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	c.waitReady(n)
}
