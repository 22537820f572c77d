package rules

import (
	"strings"
	"testing"
)

// flanneldChains are flanneld's, as its iptables traffic manager writes them.
var flanneldChains = []Chain{{"nat", "POSTROUTING", "FLANNEL-POSTRTG"}, {"filter", "FORWARD", "FLANNEL-FWD"}}

// RemoveForeign takes another agent's chains away, jumps included, in every
// family, once overlayd's are in place; every other rule stays, ours too.
func TestRemoveForeignChains(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		n := newNode(t, b, "foreign")
		n.ensure(t, allOn)
		for _, v6 := range []bool{false, true} {
			n.ipt(t, v6, "-t", "nat", "-N", "FLANNEL-POSTRTG")
			n.ipt(t, v6, "-t", "nat", "-A", "FLANNEL-POSTRTG", "-s", map[bool]string{false: "10.244.0.0/16", true: "fd10:244::/56"}[v6], "-j", "RETURN")
			n.ipt(t, v6, "-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "flanneld masq", "-j", "FLANNEL-POSTRTG")
			n.ipt(t, v6, "-N", "FLANNEL-FWD")
			n.ipt(t, v6, "-A", "FLANNEL-FWD", "-j", "ACCEPT")
			n.ipt(t, v6, "-A", "FORWARD", "-m", "comment", "--comment", "flanneld forward", "-j", "FLANNEL-FWD")
			n.ipt(t, v6, "-A", "FORWARD", "-m", "comment", "--comment", "a policy engine", "-j", "ACCEPT")
		}
		var removed int
		if err := n.ns.do(t, func() error {
			var err error
			removed, err = n.m.RemoveForeign(flanneldChains)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if removed != 4 {
			t.Errorf("removed %d chains, want 4 (two per family)", removed)
		}
		for _, v6 := range []bool{false, true} {
			for _, table := range []string{"nat", "filter"} {
				dump := n.save(t, v6, table)
				if strings.Contains(dump, "FLANNEL") {
					t.Errorf("v6 %v %s: flanneld's rules left:\n%s", v6, table, dump)
				}
			}
			if f := n.save(t, v6, "filter"); !strings.Contains(f, "a policy engine") {
				t.Errorf("v6 %v: a foreign rule was removed:\n%s", v6, f)
			}
		}
		// Ours are untouched.
		n.assertTable(t, false, "nat", goldenNat("10.244.0.0/16", "10.244.1.0/24", false))
		if got := n.ensure(t, allOn); got != 0 {
			t.Errorf("Ensure after the removal changed %d rules", got)
		}
		// Nothing to remove is no error.
		if err := n.ns.do(t, func() error {
			var err error
			removed, err = n.m.RemoveForeign(flanneldChains)
			return err
		}); err != nil || removed != 0 {
			t.Errorf("second RemoveForeign: %d, %v", removed, err)
		}
	})
}
