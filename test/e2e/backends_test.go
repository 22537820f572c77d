package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	harness "github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/lab"
)

func netConf(backend string) string {
	return fmt.Sprintf(`{"Network": %q, "Backend": {"Type": %q}}`, clusterCIDR, backend)
}

// breakage is something done to a node's kernel state by hand, which the
// agent must repair without a restart.
type breakage struct {
	name    string
	do      func(c *cluster, n *lab.Node, peer peerLease)
	repairs bool // the agent itself has to put something back (counted)
}

func run(t *testing.T, n *lab.Node, argv ...string) {
	t.Helper()
	if out, err := n.Exec(context.Background(), argv...); err != nil {
		t.Fatalf("%v on %s: %v\n%s", argv, n.Name, err, out)
	}
}

var (
	routeDeleted = breakage{"peer route deleted", func(c *cluster, n *lab.Node, p peerLease) {
		run(c.t, n, "ip", "route", "del", p.subnet.String())
	}, true}
	underlayFlapped = breakage{"underlay link down and up", func(c *cluster, n *lab.Node, _ peerLease) {
		run(c.t, n, "ip", "link", "set", "eth0", "down")
		run(c.t, n, "ip", "link", "set", "eth0", "up")
	}, false}
)

// testBackend runs the common end-to-end checks of a backend: three nodes
// with two pods each reach each other; the kernel holds exactly what the
// leases call for; each breakage is repaired by the running agent; a node
// deleted from the API disappears from every peer.
func testBackend(t *testing.T, backend string, breakages ...breakage) {
	testBackendConf(t, netConf(backend), breakages...)
}

// testBackendConf is testBackend with a whole net-conf.json.
func testBackendConf(t *testing.T, conf string, breakages ...breakage) *cluster {
	c := newCluster(t, clusterOptions{Nodes: 3, PodsPerNode: 2, NetConf: conf})
	c.requireFullMesh(c.Pods)
	c.requireKernelStateMatchesLeases()

	n1, n2 := c.node(0), c.node(1)
	peer := c.leases()[n2.Name]
	for _, b := range breakages {
		t.Run(b.name, func(t *testing.T) {
			pid := c.Agents[n1.Name].Pid()
			before := metricValue(t, c, n1, "overlayd_repairs_total")
			b.do(c, n1, peer)
			c.requireKernelStateMatchesLeases()
			c.requireFullMesh(c.Pods)
			if p := c.Agents[n1.Name]; !p.Running() || p.Pid() != pid {
				t.Fatalf("the agent on %s was restarted; repairs must not need that", n1.Name)
			}
			if b.repairs {
				if after := metricValue(t, c, n1, "overlayd_repairs_total"); after <= before {
					t.Errorf("overlayd_repairs_total %v -> %v: repair not counted", before, after)
				}
			}
		})
	}

	t.Run("node deleted from the API", func(t *testing.T) {
		n3 := c.node(2)
		gone := c.leases()[n3.Name]
		c.Agents[n3.Name].Stop()
		if err := c.Admin.CoreV1().Nodes().Delete(context.Background(), n3.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		c.requireKernelStateMatchesLeases()
		for _, n := range []*lab.Node{n1, n2} {
			if hasRoute(t, n, gone.subnet.String()) {
				t.Errorf("%s still routes the deleted node's subnet", n.Name)
			}
		}
		c.requireFullMesh(append(c.PodsOn(n1), c.PodsOn(n2)...))
	})
	return c
}

func TestVXLAN(t *testing.T) {
	testBackend(t, "vxlan",
		routeDeleted,
		breakage{"FDB entry deleted", func(c *cluster, n *lab.Node, p peerLease) {
			run(c.t, n, "bridge", "fdb", "del", p.vtepMAC, "dev", "overlay.1", "dst", p.publicIP.String(), "self")
		}, true},
		breakage{"neighbour entry deleted", func(c *cluster, n *lab.Node, p peerLease) {
			run(c.t, n, "ip", "neigh", "del", p.subnet.Addr().String(), "dev", "overlay.1")
		}, true},
		breakage{"vxlan device deleted", func(c *cluster, n *lab.Node, _ peerLease) {
			run(c.t, n, "ip", "link", "del", "overlay.1")
		}, true},
		underlayFlapped,
	)
}

func TestHostGW(t *testing.T) {
	testBackend(t, "host-gw",
		routeDeleted,
		// Taking the underlay down removes every route through it.
		breakage{underlayFlapped.name, underlayFlapped.do, true},
	)
}

func TestUDP(t *testing.T) {
	testBackend(t, "udp",
		routeDeleted,
		breakage{"TUN device deleted", func(c *cluster, n *lab.Node, _ peerLease) {
			run(c.t, n, "ip", "link", "del", "overlay0")
		}, true},
		underlayFlapped,
	)
}

// TestHostGWSkipsPeersNotOnLink: a peer on another L2 segment cannot be
// reached by direct routing; it is reported and skipped, never given a
// route that cannot work, and the other peers are unaffected.
func TestHostGWSkipsPeersNotOnLink(t *testing.T) {
	c := newCluster(t, clusterOptions{Nodes: 2, RoutedNodes: 1, NetConf: netConf("host-gw")})
	c.requireKernelStateMatchesLeases()
	far := c.Lab.Nodes[2]
	if far.Segment == c.node(0).Segment {
		t.Fatal("lab put the routed node on the first segment")
	}
	farLease := c.leases()[far.Name]
	for _, n := range c.Lab.Nodes[:2] {
		if hasRoute(t, n, farLease.subnet.String()) {
			t.Errorf("%s has a route to %s, which is not on its link", n.Name, far.Name)
		}
		if v := metricValue(t, c, n, `overlayd_peers_skipped_total{reason="not_on_link"}`); v < 1 {
			t.Errorf("%s: not_on_link skip not counted (%v)", n.Name, v)
		}
		if log := c.Agents[n.Name].Log(); !containsAll(log, "skipping peer", far.Name, "not_on_link") {
			t.Errorf("%s: skip of %s not logged", n.Name, far.Name)
		}
	}
	c.requireFullMesh(append(c.PodsOn(c.node(0)), c.PodsOn(c.node(1))...))
}

func hasRoute(t *testing.T, n *lab.Node, dst string) bool {
	for _, r := range overlaydRoutes(t, n) {
		if r.Dst == dst {
			return true
		}
	}
	return false
}

// TestDepartedPeerWhileDown: a peer that leaves while an agent is down is
// cleaned up when the agent starts, from what it finds in the kernel.
func TestDepartedPeerWhileDown(t *testing.T) {
	c := newCluster(t, clusterOptions{Nodes: 3})
	c.requireKernelStateMatchesLeases()
	n1, n3 := c.node(0), c.node(2)
	gone := c.leases()[n3.Name]

	if err := c.Agents[n1.Name].Stop(); err != nil {
		t.Fatalf("stopping agent: %v", err)
	}
	c.Agents[n3.Name].Stop()
	if err := c.Admin.CoreV1().Nodes().Delete(context.Background(), n3.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// The datapath outlived the agent: the departed peer's route is still there.
	if !hasRoute(t, n1, gone.subnet.String()) {
		t.Fatal("stopping the agent removed routes; the datapath must stay in place")
	}
	if err := c.Agents[n1.Name].Start(); err != nil {
		t.Fatal(err)
	}
	c.waitReady(n1)
	harness.Eventually(t, 30*time.Second, "departed peer's route removed", func() (bool, string) {
		return !hasRoute(t, n1, gone.subnet.String()), fmt.Sprint(overlaydRoutes(t, n1))
	})
	c.requireKernelStateMatchesLeases()
	c.requireFullMesh(append(c.PodsOn(n1), c.PodsOn(c.node(1))...))
}

// TestRestartLoss: a continuous ping at 100/s between pods on two nodes
// while the agents on both nodes are restarted, gracefully (SIGTERM) and
// abruptly (SIGKILL). The in-kernel datapaths lose nothing; the userspace
// datapaths cannot forward while no agent runs: udp loses at most 10
// packets per restart, wireguard (kernel-less here) 20: starting
// wireguard-go and the handshakes with its peers take some 10-60 ms more
// on this 2-core lab under load.
func TestRestartLoss(t *testing.T) {
	for _, tc := range []struct {
		backend        string
		maxLostPerStep int
	}{{"vxlan", 0}, {"host-gw", 0}, {"udp", 10}, {"wireguard", 20}} {
		t.Run(tc.backend, func(t *testing.T) {
			c := newCluster(t, clusterOptions{Nodes: 2, NetConf: netConf(tc.backend)})
			c.requireFullMesh(c.Pods)
			src, dst := c.PodsOn(c.node(0))[0], c.PodsOn(c.node(1))[0]
			restartLoss(t, c, []netip.Addr{dst.IP}, src, tc.maxLostPerStep)
			warm := map[string]string{
				"udp":       "udp datapath resumed from the previous run's peer table",
				"wireguard": "WireGuard device resumed from the previous run's peers",
			}[tc.backend]
			for _, n := range c.Lab.Nodes {
				if warm != "" && !strings.Contains(c.Agents[n.Name].Log(), warm) {
					t.Errorf("%s: the restarted agent did not warm-start the %s datapath", n.Name, tc.backend)
				}
			}
		})
	}
}

// restartLoss pings each of dsts from src at 100/s while the agents on
// the first two nodes are restarted in turn, by SIGTERM and by SIGKILL, and
// fails if a restart loses more than maxLostPerStep pings to any of them.
func restartLoss(t *testing.T, c *cluster, dsts []netip.Addr, src *lab.Pod, maxLostPerStep int) {
	t.Helper()
	var pingers []*lab.Pinger
	for _, dst := range dsts {
		p, err := src.StartPinger(dst, 10*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		pingers = append(pingers, p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// settle waits until replies flow again after a restart, so that every
	// loss is charged to the restart that caused it.
	settle := func() []PingCounts {
		var out []PingCounts
		for _, p := range pingers {
			if err := p.WaitReceived(ctx, p.Stats().Received+30); err != nil {
				t.Fatalf("pinger to %s: %v (%s)", p.To, err, p.Stats())
			}
			s := p.Stats()
			out = append(out, PingCounts{s.Sent, s.Received})
		}
		return out
	}
	before := settle()
	for _, step := range []struct {
		node int
		sig  syscall.Signal
	}{{0, syscall.SIGTERM}, {1, syscall.SIGTERM}, {0, syscall.SIGKILL}, {1, syscall.SIGKILL}} {
		restartAgent(t, c, c.node(step.node), step.sig)
		after := settle()
		for i, p := range pingers {
			lost := (after[i].sent - before[i].sent) - (after[i].received - before[i].received)
			t.Logf("restart of the agent on %s by %v: %d of %d pings to %s lost", c.node(step.node).Name, step.sig, lost, after[i].sent-before[i].sent, p.To)
			if lost > maxLostPerStep {
				t.Errorf("restart by %v lost %d pings to %s; at most %d allowed", step.sig, lost, p.To, maxLostPerStep)
			}
		}
		before = after
	}
	for _, p := range pingers {
		t.Logf("ping to %s at 100/s across 4 agent restarts: %s", p.To, p.Stop())
	}
}

// PingCounts is a snapshot of a pinger's counts.
type PingCounts struct{ sent, received int }

// restartAgent stops the node's agent with sig, starts it again and waits
// until it is ready.
func restartAgent(t *testing.T, c *cluster, n *lab.Node, sig syscall.Signal) {
	t.Helper()
	p := c.Agents[n.Name]
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
