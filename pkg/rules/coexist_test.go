package rules

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// policyEngine installs, before overlayd runs, what a Canal-style policy
// engine and other node software leave in the tables: a policy chain jumped
// to from the top of FORWARD (as Calico does) that drops traffic to one pod,
// an unrelated FORWARD rule, FORWARD policy DROP (as Docker sets), unrelated
// nat rules and chains, and a kube-proxy-style masquerade mark in mangle.
var policyEngine = [][]string{
	{"-t", "filter", "-N", "POLICY-FWD"},
	{"-t", "filter", "-A", "POLICY-FWD", "-d", "10.244.2.3/32", "-m", "comment", "--comment", "policy: deny pod b3", "-j", "DROP"},
	{"-t", "filter", "-A", "FORWARD", "-i", "none0", "-j", "ACCEPT"},
	{"-t", "filter", "-I", "FORWARD", "1", "-m", "comment", "--comment", "policy engine", "-j", "POLICY-FWD"},
	{"-t", "filter", "-P", "FORWARD", "DROP"},
	{"-t", "nat", "-N", "FOREIGN-NAT"},
	{"-t", "nat", "-A", "FOREIGN-NAT", "-d", "192.0.2.0/24", "-j", "RETURN"},
	{"-t", "nat", "-A", "POSTROUTING", "-j", "FOREIGN-NAT"},
	{"-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "!", "-o", "docker0", "-j", "MASQUERADE"},
	{"-t", "mangle", "-A", "PREROUTING", "-p", "udp", "--dport", "7444", "-j", "MARK", "--set-xmark", "0x4000/0x4000"},
}

// foreignView is a table as iptables-save prints it, without the lines that
// are overlayd's: what everyone else owns, in its order.
func foreignView(save string) string {
	var b strings.Builder
	for _, l := range strings.Split(save, "\n") {
		if !strings.Contains(l, "OVERLAYD") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// router is a node between pods and the outside:
//
//	A (local pod 10.244.1.2) ── R ── B (pods 10.244.2.2, 10.244.2.3 on "another node")
//	                            │
//	                            X (outside the cluster, 198.19.0.2)
//
// R carries the lease 10.244.1.0/24 of the cluster network 10.244.0.0/16.
type router struct {
	*node
	a, b, x *testNS
}

func newRouter(t *testing.T, bk backend) *router {
	t.Helper()
	r := &router{node: newNode(t, bk, "r")}
	r.a, r.b, r.x = newNS(t, "a"), newNS(t, "b"), newNS(t, "x")
	veth(t, r.ns, "to-a", "10.244.1.1/24", r.a, "eth0", "10.244.1.2/24")
	veth(t, r.ns, "to-b", "10.244.2.1/24", r.b, "eth0", "10.244.2.2/24")
	r.b.ip(t, "addr", "add", "10.244.2.3/24", "dev", "eth0")
	veth(t, r.ns, "to-x", "198.19.0.1/24", r.x, "eth0", "198.19.0.2/24")
	r.a.ip(t, "route", "add", "default", "via", "10.244.1.1")
	r.b.ip(t, "route", "add", "default", "via", "10.244.2.1")
	r.x.ip(t, "route", "add", "10.244.0.0/16", "via", "198.19.0.1")
	r.ns.exec(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	return r
}

func TestCoexistenceWithPolicyEngine(t *testing.T) {
	forEachBackend(t, func(t *testing.T, bk backend) {
		r := newRouter(t, bk)
		for _, args := range policyEngine {
			r.ipt(t, false, args...)
		}
		tables := []string{"filter", "nat", "mangle"}
		foreign := map[string]string{}
		for _, table := range tables {
			foreign[table] = foreignView(r.save(t, false, table))
		}
		assertForeignUnchanged := func(step string) {
			t.Helper()
			for _, table := range tables {
				if got := foreignView(r.save(t, false, table)); got != foreign[table] {
					t.Errorf("after %s, the foreign part of %s changed:\ngot:\n%s\nwant:\n%s", step, table, got, foreign[table])
				}
			}
		}

		r.ensure(t, allOn)
		assertForeignUnchanged("the first Ensure")
		// Our jumps come after everything that was there: the policy
		// engine's chain first, our accepts last.
		for table, parent := range map[string]string{"filter": "FORWARD", "nat": "POSTROUTING"} {
			var rules []string
			for _, l := range strings.Split(r.save(t, false, table), "\n") {
				if strings.HasPrefix(l, "-A "+parent+" ") {
					rules = append(rules, l)
				}
			}
			if len(rules) == 0 || !strings.Contains(rules[len(rules)-1], "-j OVERLAYD-") {
				t.Errorf("overlayd's jump is not the last rule of %s:\n%s", parent, strings.Join(rules, "\n"))
			}
		}
		if first := strings.Split(foreignView(r.save(t, false, "filter")), "\n"); !strings.Contains(strings.Join(first, "\n"), "-A FORWARD -m comment --comment \"policy engine\" -j POLICY-FWD\n-A FORWARD -i none0 -j ACCEPT") {
			t.Errorf("the policy engine's jump lost its place at the top of FORWARD")
		}

		assertChanges(t, "second Ensure", r.ensure(t, allOn), 0)
		assertForeignUnchanged("a second Ensure")

		t.Run("traffic", func(t *testing.T) {
			checkTraffic(t, r)
		})

		r.ipt(t, false, "-t", "nat", "-D", MasqChain, "2")
		r.ipt(t, false, "-t", "filter", "-D", "FORWARD", "-m", "comment", "--comment", "overlayd forward rules", "-j", ForwardChain)
		assertChanges(t, "repair", r.ensure(t, allOn), 2)
		assertForeignUnchanged("repairs")

		noMasq := allOn
		noMasq.IPMasq = false
		r.ensure(t, noMasq)
		assertForeignUnchanged("switching IPMasq off")
		t.Run("traffic without masquerade", func(t *testing.T) {
			recvX := r.x.listenUDP(t, "198.19.0.2:7000")
			if src := sourceSeen(t, r.a, "198.19.0.2:7000", recvX, "a to x, no masq"); src != netip.MustParseAddr("10.244.1.2") {
				t.Errorf("with IPMasq off, x saw %s, want the pod's own 10.244.1.2", src)
			}
		})

		nothing := noMasq
		nothing.ForwardRules = false
		r.ensure(t, nothing)
		assertForeignUnchanged("switching ForwardRules off")
		t.Run("no forwarding without forward rules", func(t *testing.T) {
			// FORWARD's policy is DROP: without our accepts, pod traffic
			// ends there.
			before := r.counter(t, "filter", ":FORWARD DROP")
			r.a.sendUDP(t, "10.244.2.2:7001", "dropped by policy")
			waitFor(t, "the FORWARD policy to drop a→b", func() bool {
				return r.counter(t, "filter", ":FORWARD DROP") > before
			})
		})

		r.ensure(t, allOn)
		assertForeignUnchanged("switching both back on")
	})
}

// checkTraffic sends real datagrams through the router and checks what the
// receivers see.
func checkTraffic(t *testing.T, r *router) {
	recvB2 := r.b.listenUDP(t, "10.244.2.2:7000")
	recvB3 := r.b.listenUDP(t, "10.244.2.3:7000")
	recvX := r.x.listenUDP(t, "198.19.0.2:7000")
	recvXMarked := r.x.listenUDP(t, "198.19.0.2:7444")
	recvA := r.a.listenUDP(t, "10.244.1.2:7000")
	addr := netip.MustParseAddr

	// Pod to pod inside the cluster network: forwarded, source kept.
	if src := sourceSeen(t, r.a, "10.244.2.2:7000", recvB2, "a to b2"); src != addr("10.244.1.2") {
		t.Errorf("pod-to-pod traffic arrived from %s, want the pod's own 10.244.1.2", src)
	}

	// Pod to the pod the policy denies: dropped by the policy engine,
	// although our chain accepts pod traffic.
	drops := r.counter(t, "filter", "policy: deny pod b3")
	r.a.sendUDP(t, "10.244.2.3:7000", "a to b3")
	waitFor(t, "the policy engine to drop a→b3", func() bool {
		return r.counter(t, "filter", "policy: deny pod b3") > drops
	})
	// Same path, sent later: once it arrives, b3's datagram would have too.
	sourceSeen(t, r.a, "10.244.2.2:7000", recvB2, "a to b2 after b3")
	if got := received(t, recvB3); len(got) != 0 {
		t.Errorf("denied pod 10.244.2.3 received %q", got)
	}

	// Pod to outside the cluster network: masqueraded to the router.
	if src := sourceSeen(t, r.a, "198.19.0.2:7000", recvX, "a to x"); src != addr("198.19.0.1") {
		t.Errorf("pod-to-outside traffic arrived from %s, want the router's 198.19.0.1", src)
	}
	if src := sourceSeen(t, r.b, "198.19.0.2:7000", recvX, "b2 to x"); src != addr("198.19.0.1") {
		t.Errorf("traffic from a pod of another node to outside arrived from %s, want 198.19.0.1", src)
	}

	// Marked for kube-proxy: left alone by us.
	if src := sourceSeen(t, r.a, "198.19.0.2:7444", recvXMarked, "a to x marked"); src != addr("10.244.1.2") {
		t.Errorf("kube-proxy-marked traffic arrived from %s, want it untouched (10.244.1.2)", src)
	}

	// Outside to a local pod: the client address is kept.
	if src := sourceSeen(t, r.x, "10.244.1.2:7000", recvA, "x to a"); src != addr("198.19.0.2") {
		t.Errorf("outside-to-local-pod traffic arrived from %s, want the client's 198.19.0.2", src)
	}
	// Outside to a pod on another node: masqueraded, so replies return here.
	if src := sourceSeen(t, r.x, "10.244.2.2:7000", recvB2, "x to b2"); src != addr("10.244.2.1") {
		t.Errorf("outside-to-remote-pod traffic arrived from %s, want the router's 10.244.2.1", src)
	}
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// A policy engine that appends its rules after overlayd started (Calico's
// append mode) lands below our jump. overlayd does not move anything — a
// fight over the last place would never settle — but says so once.
func TestRuleAppendedBelowOurJumpIsReportedNotMoved(t *testing.T) {
	forEachBackend(t, func(t *testing.T, bk backend) {
		n := newNode(t, bk, "late")
		n.ensure(t, allOn)
		n.ipt(t, false, "-t", "filter", "-N", "LATE-POLICY")
		n.ipt(t, false, "-t", "filter", "-A", "FORWARD", "-m", "comment", "--comment", "late policy", "-j", "LATE-POLICY")
		before := n.save(t, false, "filter")
		n.logs.TakeAll()

		assertChanges(t, "Ensure with a rule below ours", n.ensure(t, allOn), 0)
		assertChanges(t, "Ensure again", n.ensure(t, allOn), 0)
		if after := n.save(t, false, "filter"); after != before {
			t.Errorf("filter table changed:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		notes := n.logs.FilterMessageSnippet("below overlayd's jump").All()
		if len(notes) != 1 {
			t.Fatalf("%d notices about the rule below our jump, want 1: %v", len(notes), notes)
		}
		if rules := strings.Join(toStrings(notes[0].ContextMap()["rules"]), "\n"); !strings.Contains(rules, `-A FORWARD -m comment --comment "late policy" -j LATE-POLICY`) {
			t.Errorf("notice does not name the late rule: %v", notes[0].ContextMap())
		}
	})
}
