package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	harness "github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/lab"
)

// udpSource sends one datagram from a pod to dst and returns the source
// address the receiver saw, retrying until one arrives.
func udpSource(t *testing.T, from *lab.Pod, to *lab.Host, port int) netip.Addr {
	t.Helper()
	var pc net.PacketConn
	if err := to.Do(func() (err error) {
		pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatalf("listening in %s: %v", to.NS, err)
	}
	defer pc.Close()
	dst := fmt.Sprintf("%s:%d", to.IP, port)
	deadline := time.Now().Add(20 * time.Second)
	buf := make([]byte, 64)
	for time.Now().Before(deadline) {
		conn, err := from.Dial(context.Background(), "udp4", dst)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write([]byte("who am i"))
		conn.Close()
		pc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		_, addr, err := pc.ReadFrom(buf)
		if err == nil {
			return netip.MustParseAddrPort(addr.String()).Addr()
		}
	}
	t.Fatalf("no datagram from %s (%s) reached %s", from.Name, from.IP, dst)
	return netip.Addr{}
}

func iptablesSave(t *testing.T, n *lab.Node, table string) string {
	t.Helper()
	out, err := n.Exec(context.Background(), "iptables-save", "-t", table)
	if err != nil {
		t.Fatalf("iptables-save on %s: %v", n.Name, err)
	}
	return out
}

// TestMasquerade: with --ip-masq, pod traffic to a host outside the cluster
// network leaves with the node's address, while traffic between pods keeps
// the pod's address; without it (after a restart), the pod address goes out
// and no overlayd masquerade rule is left behind.
func TestMasquerade(t *testing.T) {
	c := newCluster(t, clusterOptions{Nodes: 2, ExternalHost: true, Args: []string{"--ip-masq"}})
	c.requireFullMesh(c.Pods)
	n1 := c.node(0)
	pod1, pod2 := c.PodsOn(n1)[0], c.PodsOn(c.node(1))[0]

	if src := udpSource(t, pod1, c.Lab.External, 7001); src != n1.IP {
		t.Errorf("with --ip-masq, the external host saw %s; want the node's address %s", src, n1.IP)
	}
	if src := udpSource(t, pod1, &pod2.Host, 7002); src != pod1.IP {
		t.Errorf("pod to pod across nodes arrived from %s; want the pod's own address %s", src, pod1.IP)
	}
	if nat := iptablesSave(t, n1, "nat"); !strings.Contains(nat, "-j OVERLAYD-POSTRTG") {
		t.Fatalf("no masquerade jump on %s:\n%s", n1.Name, nat)
	}

	// Restart every agent without --ip-masq.
	for _, n := range c.Lab.Nodes {
		c.restartAgentWithArgs(n)
		if nat := iptablesSave(t, n, "nat"); strings.Contains(nat, "OVERLAYD") {
			t.Errorf("overlayd masquerade rules left on %s after restarting without --ip-masq:\n%s", n.Name, nat)
		}
	}
	if src := udpSource(t, pod1, c.Lab.External, 7003); src != pod1.IP {
		t.Errorf("without --ip-masq, the external host saw %s; want the pod's address %s", src, pod1.IP)
	}
}

// TestRulesRestoredWithinResync: a rule deleted by hand is back within one
// --iptables-resync period, without any other event to prompt it.
func TestRulesRestoredWithinResync(t *testing.T) {
	const resync = 2 * time.Second
	c := newCluster(t, clusterOptions{Nodes: 1, Args: []string{"--ip-masq", "--iptables-resync", "2", "--resync-period", "1h"}})
	n := c.node(0)
	for _, del := range [][]string{
		{"iptables", "-t", "filter", "-D", "FORWARD", "-m", "comment", "--comment", "overlayd forward rules", "-j", "OVERLAYD-FWD"},
		{"iptables", "-t", "nat", "-F", "OVERLAYD-POSTRTG"},
	} {
		before := iptablesSave(t, n, "filter") + iptablesSave(t, n, "nat")
		run(t, n, del...)
		start := time.Now()
		// One period, plus what one reconcile takes on a loaded machine.
		harness.Eventually(t, resync+3*time.Second, "rules restored after "+strings.Join(del, " "), func() (bool, string) {
			after := iptablesSave(t, n, "filter") + iptablesSave(t, n, "nat")
			return ruleLines(after) == ruleLines(before), after
		})
		t.Logf("%s: restored after %s (resync period %s)", strings.Join(del[1:], " "), time.Since(start).Round(10*time.Millisecond), resync)
	}
}

// ruleLines are the rules of an iptables-save dump, without counters and
// comments about the dump itself.
func ruleLines(dump string) string {
	var out []string
	for _, l := range strings.Split(dump, "\n") {
		if strings.HasPrefix(l, "-A ") || strings.HasPrefix(l, ":") && !strings.Contains(l, "ACCEPT [") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// foreignFilter is the filter table without overlayd's chain and jump, and
// without counters: what a policy engine owns.
func foreignFilter(dump string) string {
	var out []string
	for _, l := range strings.Split(dump, "\n") {
		if strings.Contains(l, "OVERLAYD") || strings.HasPrefix(l, "#") {
			continue
		}
		if i := strings.Index(l, " ["); strings.HasPrefix(l, ":") && i > 0 {
			l = l[:i]
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

// TestPolicyEngineCoexistence: a "policy engine" installed before overlayd
// (its own chain, jumped to from the top of FORWARD, dropping traffic to
// one pod) keeps deciding: traffic to that pod is dropped across nodes while
// the other pods are reachable, and its chain and position are untouched by
// overlayd starting, resyncing and stopping. The rules are hand-written:
// what overlayd must leave alone and let decide, whoever wrote them; a real
// engine deciding real NetworkPolicy beside overlayd is
// TestPolicyEngineEnforcesNetworkPolicy.
func TestPolicyEngineCoexistence(t *testing.T) {
	var denied netip.Addr
	policy := map[string]string{}
	c := newCluster(t, clusterOptions{
		Nodes: 2, PodsPerNode: 2, Args: []string{"--iptables-resync", "1"},
		BeforeAgents: func(c *cluster, n *lab.Node, podCIDR netip.Prefix) {
			if n == c.node(1) {
				// The lab gives a node's first pod the subnet's second address.
				denied = podCIDR.Addr().Next().Next()
			}
			for _, n := range c.Lab.Nodes {
				if _, done := policy[n.Name]; done {
					continue
				}
				run(t, n, "iptables", "-N", "POLICY-ENGINE")
				run(t, n, "iptables", "-I", "FORWARD", "1", "-m", "comment", "--comment", "policy engine", "-j", "POLICY-ENGINE")
				policy[n.Name] = ""
			}
			if denied.IsValid() {
				for _, n := range c.Lab.Nodes {
					if !strings.Contains(iptablesSave(t, n, "filter"), denied.String()) {
						run(t, n, "iptables", "-A", "POLICY-ENGINE", "-d", denied.String()+"/32", "-j", "DROP")
					}
				}
			}
			for _, n := range c.Lab.Nodes {
				policy[n.Name] = foreignFilter(iptablesSave(t, n, "filter"))
			}
		},
	})
	deniedPod := c.PodsOn(c.node(1))[0]
	if deniedPod.IP != denied {
		t.Fatalf("the denied pod got %s, the policy drops %s", deniedPod.IP, denied)
	}
	allowedPod := c.PodsOn(c.node(1))[1]
	src := c.PodsOn(c.node(0))[0]

	checkPolicy := func(when string) {
		t.Helper()
		for _, n := range c.Lab.Nodes {
			dump := iptablesSave(t, n, "filter")
			if got := foreignFilter(dump); got != policy[n.Name] {
				t.Errorf("%s: the policy engine's rules changed %s:\nbefore:\n%s\nafter:\n%s", n.Name, when, policy[n.Name], got)
			}
			var forward []string
			for _, l := range strings.Split(dump, "\n") {
				if strings.HasPrefix(l, "-A FORWARD ") {
					forward = append(forward, l)
				}
			}
			if len(forward) == 0 || !strings.Contains(forward[0], "-j POLICY-ENGINE") {
				t.Errorf("%s: the policy engine's jump is no longer first in FORWARD %s:\n%s", n.Name, when, strings.Join(forward, "\n"))
			}
		}
	}
	checkPolicy("when overlayd started")

	if err := src.PingWithin(allowedPod.IP, 20*time.Second); err != nil {
		t.Fatalf("allowed pod unreachable across nodes: %v", err)
	}
	if err := src.PingWithin(deniedPod.IP, 2*time.Second); err == nil {
		t.Fatalf("the policy engine drops traffic to %s, yet a ping across nodes got through", deniedPod.IP)
	}
	// Dropped by the policy engine's rule (on the sending node, where the
	// packet is first forwarded), not lost elsewhere: its counter moved.
	out, err := c.node(0).Exec(context.Background(), "iptables", "-t", "filter", "-L", "POLICY-ENGINE", "-v", "-n", "-x")
	if err != nil {
		t.Fatal(err)
	}
	var dropped int
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[2] == "DROP" {
			fmt.Sscan(f[0], &dropped)
		}
	}
	if dropped == 0 {
		t.Fatalf("the policy engine's DROP rule counted no packets:\n%s", out)
	}

	// Several resyncs (one a second) change nothing of the engine's.
	runs := metricValue(t, c, c.node(0), "overlayd_reconcile_runs_total")
	harness.Eventually(t, 30*time.Second, "three more reconciles", func() (bool, string) {
		now := metricValue(t, c, c.node(0), "overlayd_reconcile_runs_total")
		return now >= runs+3, fmt.Sprint(now)
	})
	checkPolicy("after resyncs")

	for _, n := range c.Lab.Nodes {
		c.Agents[n.Name].Stop()
	}
	checkPolicy("after overlayd stopped")
}
