package rules

import (
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

var (
	net4  = netip.MustParsePrefix("10.244.0.0/16")
	sub4  = netip.MustParsePrefix("10.244.1.0/24")
	net6  = netip.MustParsePrefix("fd10:244::/56")
	sub6  = netip.MustParsePrefix("fd10:244:0:1::/64")
	allOn = Config{Network: net4, Subnet: sub4, IPMasq: true, ForwardRules: true}
)

// node is one namespace with a Manager bound to one iptables backend.
type node struct {
	ns   *testNS
	b    backend
	m    *Manager
	logs *observer.ObservedLogs
}

func newNode(t testing.TB, b backend, role string) *node {
	t.Helper()
	guardHost(t)
	n := &node{ns: newNS(t, role), b: b}
	n.restart(t)
	return n
}

// restart replaces the Manager with a fresh one, as a restarted process
// would have: no memory of what the previous one did.
func (n *node) restart(t testing.TB) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	m, err := New(zap.New(core), WithBackend(n.b.name))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	n.m, n.logs = m, logs
}

// ensure runs Ensure inside the node's namespace.
func (n *node) ensure(t testing.TB, cfg Config) int {
	t.Helper()
	var changes int
	err := n.ns.do(t, func() error {
		var err error
		changes, err = n.m.Ensure(cfg)
		return err
	})
	if err != nil {
		t.Fatalf("Ensure(%+v): %v", cfg, err)
	}
	return changes
}

// ipt runs the backend's iptables (or ip6tables) by hand inside the node.
func (n *node) ipt(t testing.TB, v6 bool, args ...string) string {
	t.Helper()
	cmd := n.b.cmd
	if v6 {
		cmd = n.b.cmd6
	}
	return n.ns.exec(t, append([]string{cmd}, args...)...)
}

func (n *node) save(t testing.TB, v6 bool, table string) string {
	t.Helper()
	return n.ns.save(t, n.b, v6, table)
}

// stampCounters rewrites the rules of one of our chains unchanged but with
// packet counters 7 and byte counters 777. Rewriting a chain resets its
// counters, so counters still at 7/777 after Ensure prove Ensure left the
// chain alone.
func (n *node) stampCounters(t testing.TB, v6 bool, table, chain string) {
	t.Helper()
	var in strings.Builder
	fmt.Fprintf(&in, "*%s\n:%s - [0:0]\n", table, chain)
	for _, l := range strings.Split(n.save(t, v6, table), "\n") {
		if strings.HasPrefix(l, "-A "+chain+" ") {
			fmt.Fprintf(&in, "[7:777] %s\n", l)
		}
	}
	in.WriteString("COMMIT\n")
	restore := n.b.restore
	if v6 {
		restore = strings.Replace(restore, "iptables", "ip6tables", 1)
	}
	cmd := exec.Command("ip", "netns", "exec", n.ns.name, restore, "-c", "--noflush")
	cmd.Stdin = strings.NewReader(in.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("stamping counters on %s: %v: %s", chain, err, out)
	}
	n.assertCounters(t, v6, table, chain, "[7:777]")
}

// assertCounters checks every rule of chain carries the given counters.
func (n *node) assertCounters(t testing.TB, v6 bool, table, chain, want string) {
	t.Helper()
	save := n.b.save
	if v6 {
		save = n.b.save6
	}
	out := cleanSave(n.ns.exec(t, save, "-c", "-t", table), true)
	rules := 0
	for _, l := range strings.Split(out, "\n") {
		if !strings.Contains(l, "-A "+chain+" ") {
			continue
		}
		rules++
		if !strings.HasPrefix(l, want+" ") {
			t.Errorf("rule counters changed (the chain was rewritten): want %s on %q", want, l)
		}
	}
	if rules == 0 {
		t.Errorf("no rules in %s to check counters on:\n%s", chain, out)
	}
}

// chainWithCounters returns the rules of chain with their counters.
func (n *node) chainWithCounters(t testing.TB, v6 bool, table, chain string) string {
	t.Helper()
	save := n.b.save
	if v6 {
		save = n.b.save6
	}
	var b strings.Builder
	for _, l := range strings.Split(cleanSave(n.ns.exec(t, save, "-c", "-t", table), true), "\n") {
		if strings.Contains(l, "-A "+chain+" ") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// counter returns the packet counter of the first rule in table matching
// the "-A ..." line fragment.
func (n *node) counter(t testing.TB, table, fragment string) int {
	t.Helper()
	out := cleanSave(n.ns.exec(t, n.b.save, "-c", "-t", table), true)
	return counterOf(t, out, fragment)
}

var counterLineRe = regexp.MustCompile(`^\[(\d+):\d+\] (.*)$`)
var policyLineRe = regexp.MustCompile(`^(:\S+ \S+) \[(\d+):\d+\]$`)

func counterOf(t testing.TB, save, fragment string) int {
	t.Helper()
	for _, l := range strings.Split(save, "\n") {
		if m := counterLineRe.FindStringSubmatch(l); m != nil && strings.Contains(m[2], fragment) {
			v, _ := strconv.Atoi(m[1])
			return v
		}
		if m := policyLineRe.FindStringSubmatch(l); m != nil && m[1] == fragment {
			v, _ := strconv.Atoi(m[2])
			return v
		}
	}
	t.Fatalf("no line %q in\n%s", fragment, save)
	return 0
}

// goldenNat is the complete nat table wanted for network/subnet (IPv4 or
// IPv6) and nothing else.
func goldenNat(network, subnet string, v6 bool) string {
	mc := "224.0.0.0/4"
	if v6 {
		mc = "ff00::/8"
	}
	return fmt.Sprintf(`*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:OVERLAYD-POSTRTG - [0:0]
-A POSTROUTING -m comment --comment "overlayd masquerade rules" -j OVERLAYD-POSTRTG
-A OVERLAYD-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "overlayd: kube-proxy masquerades its marked traffic" -j RETURN
-A OVERLAYD-POSTRTG -s %[1]s -d %[1]s -m comment --comment "overlayd: no masquerade inside the cluster network" -j RETURN
-A OVERLAYD-POSTRTG ! -s %[1]s -d %[2]s -m comment --comment "overlayd: keep client address towards local pods" -j RETURN
-A OVERLAYD-POSTRTG -s %[1]s ! -d %[3]s -m comment --comment "overlayd: masquerade pod traffic leaving the cluster network" -j MASQUERADE --random-fully
-A OVERLAYD-POSTRTG ! -s %[1]s -d %[1]s -m comment --comment "overlayd: masquerade outside traffic to pods on other nodes" -j MASQUERADE --random-fully
COMMIT
`, network, subnet, mc)
}

// emptyNat is the nat table with nothing of ours (and nothing else) in it.
const emptyNat = `*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
`

func goldenFilter(network string) string {
	return fmt.Sprintf(`*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:OVERLAYD-FWD - [0:0]
-A FORWARD -m comment --comment "overlayd forward rules" -j OVERLAYD-FWD
-A OVERLAYD-FWD -s %[1]s -m comment --comment "overlayd: forward traffic from the pod network" -j ACCEPT
-A OVERLAYD-FWD -d %[1]s -m comment --comment "overlayd: forward traffic to the pod network" -j ACCEPT
COMMIT
`, network)
}

const emptyFilter = `*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
`

// assertTable compares one table of the node with want, line for line.
func (n *node) assertTable(t testing.TB, v6 bool, table, want string) {
	t.Helper()
	if got := n.save(t, v6, table); got != want {
		t.Errorf("%s table (ipv6=%v) of %s:\ngot:\n%s\nwant:\n%s", table, v6, n.ns.name, got, want)
	}
}

// assertChanges checks Ensure's change count.
func assertChanges(t testing.TB, what string, got, want int) {
	t.Helper()
	if got != want {
		t.Errorf("%s: Ensure made %d changes, want %d", what, got, want)
	}
}
