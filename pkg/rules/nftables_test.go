package rules

import (
	"os/exec"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
)

// nftNode is a namespace of the test's own with an NFT bound to it.
type nftNode struct {
	ns  *testNS
	nft *NFT
}

func newNFTNode(t *testing.T, role string) *nftNode {
	t.Helper()
	guardHostNFT(t)
	n := &nftNode{ns: newNS(t, role)}
	if err := n.ns.do(t, func() error {
		var err error
		n.nft, err = NewNFT(zaptest.NewLogger(t))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

func (n *nftNode) ensure(t *testing.T, cfg Config) int {
	t.Helper()
	var changes int
	if err := n.ns.do(t, func() error {
		var err error
		changes, err = n.nft.Ensure(cfg)
		return err
	}); err != nil {
		t.Fatalf("Ensure(%+v): %v", cfg, err)
	}
	return changes
}

func (n *nftNode) ruleset(t *testing.T) string {
	t.Helper()
	return n.ns.exec(t, "nft", "list", "ruleset")
}

// guardHostNFT fails the test if the host's nftables ruleset differs at its
// end from its start: the tests only touch namespaces of their own.
func guardHostNFT(t *testing.T) {
	t.Helper()
	read := func() string {
		out, err := exec.Command("nft", "list", "ruleset").CombinedOutput()
		if err != nil {
			t.Fatalf("nft list ruleset on the host: %v %s", err, out)
		}
		return string(out)
	}
	before := read()
	t.Cleanup(func() {
		if after := read(); after != before {
			t.Errorf("the host's nftables changed during the test:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	})
}

var nftOn = Config{Network: net4, Subnet: sub4, IPv6Network: net6, IPv6Subnet: sub6, IPMasq: true, ForwardRules: true}

// The table holds exactly the wanted rules of both families, in the order
// of the iptables form; a second Ensure changes nothing.
func TestNFTEnsureCreatesExactlyTheRules(t *testing.T) {
	n := newNFTNode(t, "nftc")
	if got := n.ensure(t, nftOn); got != 2 {
		t.Errorf("first Ensure: %d chains written, want 2", got)
	}
	rs := n.ruleset(t)
	for _, want := range []string{
		"table inet overlayd",
		"type nat hook postrouting priority srcnat; policy accept;",
		"meta mark & 0x00004000 == 0x00004000 return",
		"ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return",
		"ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return",
		"ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
		"ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
		"ip6 saddr fd10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random",
		"type filter hook forward priority filter; policy accept;",
		"ip saddr 10.244.0.0/16 accept",
		"ip6 daddr fd10:244::/56 accept",
	} {
		if !strings.Contains(rs, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, rs)
		}
	}
	if strings.Index(rs, "meta mark") > strings.Index(rs, "masquerade fully-random") {
		t.Errorf("kube-proxy's mark is not checked first:\n%s", rs)
	}
	if got := n.ensure(t, nftOn); got != 0 {
		t.Errorf("second Ensure changed %d chains", got)
	}
	off := nftOn
	off.NoRandomFully = true
	n.ensure(t, off)
	if rs := n.ruleset(t); strings.Contains(rs, "fully-random") || !strings.Contains(rs, "masquerade") {
		t.Errorf("--ip-masq-fully-random-disable:\n%s", rs)
	}
}

// A rule or chain of ours deleted or edited by hand is restored (and
// counted); a foreign table is left exactly as it is.
func TestNFTEnsureRestoresDrift(t *testing.T) {
	n := newNFTNode(t, "nftd")
	n.ns.exec(t, "nft", "add", "table", "inet", "engine")
	n.ns.exec(t, "nft", "add chain inet engine block { type filter hook forward priority -10 ; }")
	n.ns.exec(t, "nft", "add rule inet engine block ip daddr 10.244.1.7 drop")
	foreign := n.ns.exec(t, "nft", "list", "table", "inet", "engine")
	n.ensure(t, nftOn)

	// Delete the masquerade rule for traffic leaving the cluster.
	listing := n.ns.exec(t, "nft", "-a", "list", "chain", "inet", "overlayd", "postrouting")
	handle := ""
	for _, line := range strings.Split(listing, "\n") {
		if strings.Contains(line, "ip daddr != 224.0.0.0/4 masquerade") {
			handle = line[strings.LastIndex(line, "handle ")+len("handle "):]
		}
	}
	if handle == "" {
		t.Fatalf("no masquerade rule:\n%s", listing)
	}
	n.ns.exec(t, "nft", "delete", "rule", "inet", "overlayd", "postrouting", "handle", strings.TrimSpace(handle))
	before := testutilCounter(t, NFTMasqChain)
	if got := n.ensure(t, nftOn); got != 1 {
		t.Errorf("repair wrote %d chains, want 1", got)
	}
	if after := testutilCounter(t, NFTMasqChain); after != before+1 {
		t.Errorf("overlayd_nftables_repairs_total{chain=postrouting} %v -> %v", before, after)
	}
	if rs := n.ruleset(t); !strings.Contains(rs, "ip daddr != 224.0.0.0/4 masquerade") {
		t.Errorf("masquerade rule not restored:\n%s", rs)
	}

	// The forward chain flushed, then the whole table deleted.
	n.ns.exec(t, "nft", "flush", "chain", "inet", "overlayd", "forward")
	n.ensure(t, nftOn)
	n.ns.exec(t, "nft", "delete", "table", "inet", "overlayd")
	n.ensure(t, nftOn)
	if rs := n.ruleset(t); strings.Count(rs, "ip saddr 10.244.0.0/16 accept") != 1 || !strings.Contains(rs, "masquerade") {
		t.Errorf("not restored:\n%s", rs)
	}
	if got := n.ns.exec(t, "nft", "list", "table", "inet", "engine"); got != foreign {
		t.Errorf("a foreign table changed:\nbefore:\n%s\nafter:\n%s", foreign, got)
	}
}

// Switching a feature off removes its chain; everything off removes the
// table.
func TestNFTEnsureRemovesSwitchedOffFeatures(t *testing.T) {
	n := newNFTNode(t, "nfto")
	n.ensure(t, nftOn)
	noMasq := nftOn
	noMasq.IPMasq = false
	n.ensure(t, noMasq)
	if rs := n.ruleset(t); strings.Contains(rs, "postrouting") || !strings.Contains(rs, "hook forward") {
		t.Errorf("masquerade off:\n%s", rs)
	}
	n.ensure(t, Config{})
	if rs := n.ruleset(t); strings.Contains(rs, "overlayd") {
		t.Errorf("everything off, the table is left:\n%s", rs)
	}
}

// Modes: iptables → nftables → iptables on one node; after each switch the
// other mode holds nothing of overlayd's.
func TestModesSwitch(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		n := newNode(t, b, "modes")
		m := NewModes(zaptest.NewLogger(t), WithBackend(b.name))
		ensure := func(cfg Config) {
			t.Helper()
			if err := n.ns.do(t, func() error { _, err := m.Ensure(cfg); return err }); err != nil {
				t.Fatal(err)
			}
		}
		ensure(allOn)
		nftCfg := allOn
		nftCfg.NFTables = true
		ensure(nftCfg)
		if s := n.save(t, false, "nat") + n.save(t, false, "filter"); strings.Contains(s, "OVERLAYD") {
			t.Errorf("iptables rules left in nftables mode:\n%s", s)
		}
		if rs := n.ns.exec(t, "nft", "list", "table", "inet", "overlayd"); !strings.Contains(rs, "masquerade") {
			t.Errorf("no nftables rules in nftables mode:\n%s", rs)
		}
		ensure(allOn)
		if rs := n.ns.exec(t, "nft", "list", "ruleset"); strings.Contains(rs, "table inet overlayd") {
			t.Errorf("nftables table left in iptables mode:\n%s", rs)
		}
		n.assertTable(t, false, "nat", goldenNat("10.244.0.0/16", "10.244.1.0/24", false))
	})
}

// RemoveTables takes flanneld's nftables tables away and nothing else.
func TestNFTRemoveTables(t *testing.T) {
	n := newNFTNode(t, "nftf")
	n.ns.exec(t, "nft", "add", "table", "ip", "flannel-ipv4")
	n.ns.exec(t, "nft", "add", "table", "ip", "other")
	var removed int
	if err := n.ns.do(t, func() error {
		var err error
		removed, err = n.nft.RemoveTables([]Table{{Family: "ip", Name: "flannel-ipv4"}, {Family: "ip6", Name: "flannel-ipv6"}})
		return err
	}); err != nil || removed != 1 {
		t.Fatalf("RemoveTables: %d, %v", removed, err)
	}
	if rs := n.ruleset(t); strings.Contains(rs, "flannel") || !strings.Contains(rs, "table ip other") {
		t.Errorf("after RemoveTables:\n%s", rs)
	}
}

func testutilCounter(t *testing.T, chain string) float64 {
	t.Helper()
	return counterValue(nftRepairs.WithLabelValues(chain))
}

// Without the nft command, nftables mode says what is missing; iptables
// mode does not need it.
func TestNFTMissingCommand(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	if _, err := NewNFT(zaptest.NewLogger(t)); err == nil || !strings.Contains(err.Error(), "nftables mode needs the nft command (Debian and Ubuntu: package nftables)") {
		t.Fatalf("NewNFT without nft: %v", err)
	}
	m := NewModes(zaptest.NewLogger(t))
	if _, err := m.Ensure(Config{NFTables: true, Network: net4, Subnet: sub4, ForwardRules: true}); err == nil || !strings.Contains(err.Error(), "needs the nft command") {
		t.Fatalf("Modes in nftables mode without nft: %v", err)
	}
}
