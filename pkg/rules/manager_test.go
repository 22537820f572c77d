package rules

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/coreos/go-iptables/iptables"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// The whole approach rests on this: a process started from an OS thread
// that was switched into a namespace runs in that namespace, and nothing
// reaches the host.
func TestExecInheritsThreadNetns(t *testing.T) {
	guardHost(t)
	ns := newNS(t, "probe")
	var childNS string
	err := ns.do(t, func() error {
		out, err := exec.Command("readlink", "/proc/self/ns/net").Output()
		childNS = strings.TrimSpace(string(out))
		if err != nil {
			return err
		}
		// go-iptables forks from this thread too.
		ipt, err := iptables.New()
		if err != nil {
			return err
		}
		return ipt.NewChain("filter", "OVLC-PROBE")
	})
	if err != nil {
		t.Fatal(err)
	}
	nsID := strings.TrimSpace(ns.exec(t, "readlink", "/proc/self/ns/net"))
	hostOut, err := exec.Command("readlink", "/proc/self/ns/net").Output()
	if err != nil {
		t.Fatal(err)
	}
	hostID := strings.TrimSpace(string(hostOut))
	if childNS != nsID {
		t.Errorf("child of the switched thread runs in %s, want the test namespace %s", childNS, nsID)
	}
	if childNS == hostID {
		t.Errorf("child of the switched thread runs in the host namespace %s", hostID)
	}
	if save := ns.exec(t, "iptables-save", "-t", "filter"); !strings.Contains(save, ":OVLC-PROBE") {
		t.Errorf("chain made through go-iptables on the switched thread is not in the namespace:\n%s", save)
	}
}

func TestEnsureCreatesExactlyTheRules(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		n := newNode(t, b, "create")
		assertChanges(t, "first Ensure", n.ensure(t, allOn), 4) // two chains, two jumps
		n.assertTable(t, false, "nat", goldenNat("10.244.0.0/16", "10.244.1.0/24", false))
		n.assertTable(t, false, "filter", goldenFilter("10.244.0.0/16"))

		n.stampCounters(t, false, "nat", MasqChain)
		n.stampCounters(t, false, "filter", ForwardChain)
		n.logs.TakeAll()
		assertChanges(t, "second Ensure", n.ensure(t, allOn), 0)
		n.assertCounters(t, false, "nat", MasqChain, "[7:777]")
		n.assertCounters(t, false, "filter", ForwardChain, "[7:777]")
		if logs := n.logs.Filter(func(e observer.LoggedEntry) bool { return e.Level >= zapcore.InfoLevel }).All(); len(logs) != 0 {
			t.Errorf("an Ensure with nothing to do logged %d entries: %v", len(logs), logs)
		}

		// A restarted process adopts the correct rules without touching them.
		n.restart(t)
		assertChanges(t, "Ensure after restart", n.ensure(t, allOn), 0)
		n.assertCounters(t, false, "nat", MasqChain, "[7:777]")
		n.assertCounters(t, false, "filter", ForwardChain, "[7:777]")
	})
}

func TestEnsureRestoresDrift(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		n := newNode(t, b, "drift")
		n.ensure(t, allOn)
		steps := []struct {
			name         string
			damage       []string // iptables arguments, run by hand
			table, chain string   // whose repair counter must rise
			changes      int
			logHas       string // in the repair log's restored/removed lists
		}{
			{name: "rule deleted", table: "nat", chain: MasqChain, changes: 1,
				damage: []string{"-t", "nat", "-D", MasqChain, "3"},
				logHas: "! -s 10.244.0.0/16 -d 10.244.1.0/24"},
			{name: "jump deleted", table: "filter", chain: ForwardChain, changes: 1,
				damage: []string{"-t", "filter", "-D", "FORWARD", "-m", "comment", "--comment", "overlayd forward rules", "-j", ForwardChain},
				logHas: "-A FORWARD -m comment --comment \"overlayd forward rules\" -j OVERLAYD-FWD"},
			{name: "chain flushed", table: "filter", chain: ForwardChain, changes: 1,
				damage: []string{"-t", "filter", "-F", ForwardChain},
				logHas: "-A OVERLAYD-FWD -d 10.244.0.0/16"},
			{name: "rule added to our chain", table: "nat", chain: MasqChain, changes: 1,
				damage: []string{"-t", "nat", "-I", MasqChain, "1", "-s", "10.9.0.0/16", "-j", "RETURN"},
				logHas: "-A OVERLAYD-POSTRTG -s 10.9.0.0/16 -j RETURN"},
			{name: "rule replaced", table: "nat", chain: MasqChain, changes: 1,
				damage: []string{"-t", "nat", "-R", MasqChain, "4", "-s", "10.244.0.0/16", "-j", "MASQUERADE"},
				logHas: "masquerade pod traffic leaving the cluster network"},
			{name: "duplicate jump", table: "nat", chain: MasqChain, changes: 1,
				damage: []string{"-t", "nat", "-I", "POSTROUTING", "1", "-m", "comment", "--comment", "overlayd masquerade rules", "-j", MasqChain},
				logHas: "-A POSTROUTING -m comment --comment \"overlayd masquerade rules\" -j OVERLAYD-POSTRTG"},
		}
		for _, s := range steps {
			before := counterValue(repairsTotal.WithLabelValues("ipv4", s.table, s.chain))
			n.ipt(t, false, s.damage...)
			n.logs.TakeAll()
			assertChanges(t, s.name, n.ensure(t, allOn), s.changes)
			n.assertTable(t, false, "nat", goldenNat("10.244.0.0/16", "10.244.1.0/24", false))
			n.assertTable(t, false, "filter", goldenFilter("10.244.0.0/16"))
			if got := counterValue(repairsTotal.WithLabelValues("ipv4", s.table, s.chain)) - before; got != 1 {
				t.Errorf("%s: repairs_total{%s,%s} rose by %v, want 1", s.name, s.table, s.chain, got)
			}
			repairs := n.logs.FilterMessageSnippet("restored overlayd iptables rules").All()
			if len(repairs) != 1 {
				t.Errorf("%s: %d repair log entries, want 1: %v", s.name, len(repairs), repairs)
				continue
			}
			ctx := repairs[0].ContextMap()
			lists := strings.Join(append(toStrings(ctx["restored"]), toStrings(ctx["removed"])...), "\n")
			if !strings.Contains(lists, s.logHas) || ctx["chain"] != s.chain {
				t.Errorf("%s: repair log %v does not name chain %s and %q", s.name, ctx, s.chain, s.logHas)
			}
		}

		// Both chains gone entirely (jumps and chains deleted by hand).
		n.ipt(t, false, "-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment", "overlayd masquerade rules", "-j", MasqChain)
		n.ipt(t, false, "-t", "nat", "-F", MasqChain)
		n.ipt(t, false, "-t", "nat", "-X", MasqChain)
		assertChanges(t, "chain deleted", n.ensure(t, allOn), 2)
		n.assertTable(t, false, "nat", goldenNat("10.244.0.0/16", "10.244.1.0/24", false))
		assertChanges(t, "after the repairs", n.ensure(t, allOn), 0)
	})
}

func toStrings(v any) []string {
	switch s := v.(type) {
	case []string:
		return s
	case []any:
		var out []string
		for _, e := range s {
			if str, ok := e.(string); ok {
				out = append(out, str)
			}
		}
		return out
	}
	return nil
}

func TestEnsureRemovesSwitchedOffFeatures(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		t.Run("same process", func(t *testing.T) {
			n := newNode(t, b, "off")
			n.ensure(t, allOn)
			noMasq := allOn
			noMasq.IPMasq = false
			assertChanges(t, "IPMasq off", n.ensure(t, noMasq), 2) // jump, chain
			n.assertTable(t, false, "nat", emptyNat)
			n.assertTable(t, false, "filter", goldenFilter("10.244.0.0/16"))
			assertChanges(t, "IPMasq still off", n.ensure(t, noMasq), 0)

			nothing := noMasq
			nothing.ForwardRules = false
			assertChanges(t, "ForwardRules off", n.ensure(t, nothing), 2)
			n.assertTable(t, false, "nat", emptyNat)
			n.assertTable(t, false, "filter", emptyFilter)

			assertChanges(t, "both back on", n.ensure(t, allOn), 4)
			n.assertTable(t, false, "nat", goldenNat("10.244.0.0/16", "10.244.1.0/24", false))
			n.assertTable(t, false, "filter", goldenFilter("10.244.0.0/16"))
		})
		t.Run("fresh process", func(t *testing.T) {
			n := newNode(t, b, "offrestart")
			n.ensure(t, allOn)
			n.restart(t)
			noMasq := allOn
			noMasq.IPMasq = false
			assertChanges(t, "fresh process with IPMasq off", n.ensure(t, noMasq), 2)
			n.assertTable(t, false, "nat", emptyNat)
			n.assertTable(t, false, "filter", goldenFilter("10.244.0.0/16"))

			n.restart(t)
			noFwd := allOn
			noFwd.ForwardRules = false
			assertChanges(t, "fresh process with ForwardRules off", n.ensure(t, noFwd), 4) // masq back, forward gone
			n.assertTable(t, false, "nat", goldenNat("10.244.0.0/16", "10.244.1.0/24", false))
			n.assertTable(t, false, "filter", emptyFilter)

			n.restart(t)
			assertChanges(t, "fresh process with IPv4 off", n.ensure(t, Config{IPMasq: true, ForwardRules: true}), 2)
			n.assertTable(t, false, "nat", emptyNat)
			n.assertTable(t, false, "filter", emptyFilter)
		})
	})
}

func TestEnsureFollowsLeaseAndNetwork(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		n := newNode(t, b, "lease")
		n.ensure(t, allOn)

		moved := allOn
		moved.Subnet = netipPrefix(t, "10.244.7.0/24")
		assertChanges(t, "new lease", n.ensure(t, moved), 1) // the masquerade chain only
		n.assertTable(t, false, "nat", goldenNat("10.244.0.0/16", "10.244.7.0/24", false))
		n.assertTable(t, false, "filter", goldenFilter("10.244.0.0/16"))

		renet := Config{Network: netipPrefix(t, "10.96.0.0/12"), Subnet: netipPrefix(t, "10.100.3.0/24"), IPMasq: true, ForwardRules: true}
		assertChanges(t, "new network", n.ensure(t, renet), 2) // both chains rewritten, jumps kept
		n.assertTable(t, false, "nat", goldenNat("10.96.0.0/12", "10.100.3.0/24", false))
		n.assertTable(t, false, "filter", goldenFilter("10.96.0.0/12"))
		for _, table := range []string{"nat", "filter"} {
			if save := n.save(t, false, table); strings.Contains(save, "10.244.") {
				t.Errorf("stale rule for the old network left in %s:\n%s", table, save)
			}
		}

		// A fresh process with yet another lease rewrites the stale chain.
		n.restart(t)
		renet.Subnet = netipPrefix(t, "10.100.9.0/24")
		assertChanges(t, "new lease after restart", n.ensure(t, renet), 1)
		n.assertTable(t, false, "nat", goldenNat("10.96.0.0/12", "10.100.9.0/24", false))
	})
}

func TestEnsureIPv6(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		n := newNode(t, b, "v6")
		dual := allOn
		dual.IPv6Network, dual.IPv6Subnet = net6, sub6
		assertChanges(t, "dual stack", n.ensure(t, dual), 8)
		n.assertTable(t, true, "nat", goldenNat("fd10:244::/56", "fd10:244:0:1::/64", true))
		n.assertTable(t, true, "filter", goldenFilter("fd10:244::/56"))
		n.assertTable(t, false, "nat", goldenNat("10.244.0.0/16", "10.244.1.0/24", false))

		// ip6tables-nft 1.8.9 ignores counters given to iptables-restore, so
		// real packets set them: a pod's traffic to outside the cluster
		// network, forwarded by this node, is masqueraded.
		pod, outside := newNS(t, "v6pod"), newNS(t, "v6out")
		veth(t, n.ns, "to-pod", "fd10:244:0:1::1/64", pod, "eth0", "fd10:244:0:1::2/64")
		veth(t, n.ns, "to-out", "fdff:198:18::1/64", outside, "eth0", "fdff:198:18::2/64")
		pod.ip(t, "-6", "route", "add", "default", "via", "fd10:244:0:1::1")
		n.ns.exec(t, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
		recv := outside.listenUDP(t, "[fdff:198:18::2]:7000")
		if src := sourceSeen(t, pod, "[fdff:198:18::2]:7000", recv, "pod to outside, ipv6"); src != netip.MustParseAddr("fdff:198:18::1") {
			t.Errorf("IPv6 pod-to-outside traffic arrived from %s, want the node's fdff:198:18::1", src)
		}
		counted := n.chainWithCounters(t, true, "nat", MasqChain)
		if !strings.Contains(counted, "] -A OVERLAYD-POSTRTG -s fd10:244::/56 ! -d ff00::/8") || strings.Contains(counted, "[0:0] -A OVERLAYD-POSTRTG -s fd10:244::/56 ! -d ff00::/8") {
			t.Fatalf("the masquerade rule counted no packets:\n%s", counted)
		}
		assertChanges(t, "dual stack again", n.ensure(t, dual), 0)
		if after := n.chainWithCounters(t, true, "nat", MasqChain); after != counted {
			t.Errorf("counters changed (the chain was rewritten):\nbefore:\n%s\nafter:\n%s", counted, after)
		}

		before := counterValue(repairsTotal.WithLabelValues("ipv6", "nat", MasqChain))
		n.ipt(t, true, "-t", "nat", "-D", MasqChain, "2")
		n.ipt(t, true, "-t", "filter", "-F", ForwardChain)
		n.ipt(t, true, "-t", "filter", "-D", "FORWARD", "1")
		assertChanges(t, "ip6tables repair", n.ensure(t, dual), 3)
		n.assertTable(t, true, "nat", goldenNat("fd10:244::/56", "fd10:244:0:1::/64", true))
		n.assertTable(t, true, "filter", goldenFilter("fd10:244::/56"))
		if got := counterValue(repairsTotal.WithLabelValues("ipv6", "nat", MasqChain)) - before; got != 1 {
			t.Errorf("repairs_total{ipv6,nat} rose by %v, want 1", got)
		}

		// IPv6 switched off (also in a fresh process): its chains go, IPv4's stay.
		n.restart(t)
		assertChanges(t, "IPv6 off", n.ensure(t, allOn), 4)
		n.assertTable(t, true, "nat", emptyNat)
		n.assertTable(t, true, "filter", emptyFilter)
		n.assertTable(t, false, "nat", goldenNat("10.244.0.0/16", "10.244.1.0/24", false))
		n.assertTable(t, false, "filter", goldenFilter("10.244.0.0/16"))
	})
}

// --ip-masq-fully-random-disable: the same masquerade rules without
// --random-fully, switched either way on a running node.
func TestEnsureRandomFullyDisable(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		n := newNode(t, b, "nornd")
		off := allOn
		off.NoRandomFully = true
		n.ensure(t, off)
		n.assertTable(t, false, "nat", strings.ReplaceAll(goldenNat("10.244.0.0/16", "10.244.1.0/24", false), " --random-fully", ""))
		n.ensure(t, allOn)
		n.assertTable(t, false, "nat", goldenNat("10.244.0.0/16", "10.244.1.0/24", false))
	})
}
