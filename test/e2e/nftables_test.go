package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	harness "github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/lab"
)

func nftRuleset(t *testing.T, n *lab.Node) string {
	t.Helper()
	out, err := n.Exec(context.Background(), "nft", "list", "ruleset")
	if err != nil {
		t.Fatalf("nft list ruleset on %s: %v", n.Name, err)
	}
	return out
}

// TestNFTablesMode: with "EnableNFTables": true the traffic rules live in
// nftables only: pod traffic leaving the cluster arrives from the node's
// address, pod to pod keeps the pod's address, a foreign table dropping
// traffic to one pod still drops it and is left as it is, a masquerade rule
// of ours deleted with nft comes back within the resync, and iptables-save
// shows nothing of overlayd's. The foreign table is hand-written; a real
// policy engine beside nftables mode is TestPolicyEngineEnforcesNetworkPolicy.
func TestNFTablesMode(t *testing.T) {
	const conf = `{"Network": "10.244.0.0/16", "EnableNFTables": true, "Backend": {"Type": "vxlan"}}`
	c := newCluster(t, clusterOptions{Nodes: 2, PodsPerNode: 2, ExternalHost: true, NetConf: conf,
		Args: []string{"--ip-masq", "--iptables-resync", "2"}})
	n1, n2 := c.node(0), c.node(1)
	c.requireFullMesh(c.Pods)
	pod1, pod2 := c.PodsOn(n1)[0], c.PodsOn(n2)[0]

	if src := udpSource(t, pod1, c.Lab.External, 7101); src != n1.IP {
		t.Errorf("the external host saw %s; want the node's address %s", src, n1.IP)
	}
	if src := udpSource(t, pod1, &pod2.Host, 7102); src != pod1.IP {
		t.Errorf("pod to pod arrived from %s; want the pod's own address %s", src, pod1.IP)
	}
	for _, n := range []*lab.Node{n1, n2} {
		for _, table := range []string{"nat", "filter"} {
			if s := iptablesSave(t, n, table); strings.Contains(s, "OVERLAYD") {
				t.Errorf("%s: iptables-save -t %s shows overlayd's rules in nftables mode:\n%s", n.Name, table, s)
			}
		}
		if rs := nftRuleset(t, n); !strings.Contains(rs, "table inet overlayd") || !strings.Contains(rs, "masquerade fully-random") {
			t.Errorf("%s: no overlayd table:\n%s", n.Name, rs)
		}
	}

	// A policy engine's table drops traffic to one pod of node-2.
	blocked := c.PodsOn(n2)[1]
	run(t, n2, "nft", "add", "table", "inet", "engine")
	run(t, n2, "nft", "add chain inet engine block { type filter hook forward priority -10 ; }")
	run(t, n2, "nft", "add rule inet engine block ip daddr "+blocked.IP.String()+" drop")
	foreign := run2(t, n2, "nft", "list", "table", "inet", "engine")
	if err := pod1.PingWithin(blocked.IP, 2*time.Second); err == nil {
		t.Errorf("the foreign table's drop did not hold: %s reached %s", pod1.Name, blocked.Name)
	}
	if err := pod1.PingWithin(pod2.IP, 5*time.Second); err != nil {
		t.Errorf("traffic to the other pod of node-2 dropped too: %v", err)
	}

	// Our masquerade rule for traffic leaving the cluster, deleted by hand.
	listing := run2(t, n1, "nft", "-a", "list", "chain", "inet", "overlayd", "postrouting")
	handle := ""
	for _, line := range strings.Split(listing, "\n") {
		if strings.Contains(line, "ip daddr != 224.0.0.0/4 masquerade") {
			handle = strings.TrimSpace(line[strings.LastIndex(line, "handle ")+len("handle "):])
		}
	}
	if handle == "" {
		t.Fatalf("no masquerade rule on %s:\n%s", n1.Name, listing)
	}
	run(t, n1, "nft", "delete", "rule", "inet", "overlayd", "postrouting", "handle", handle)
	harness.Eventually(t, 10*time.Second, "the masquerade rule back", func() (bool, string) {
		rs := nftRuleset(t, n1)
		return strings.Contains(rs, "ip daddr != 224.0.0.0/4 masquerade"), rs
	})
	if src := udpSource(t, pod1, c.Lab.External, 7103); src != n1.IP {
		t.Errorf("after the repair the external host saw %s; want %s", src, n1.IP)
	}
	// The resyncs since (the repair took one) left the foreign table alone.
	if got := run2(t, n2, "nft", "list", "table", "inet", "engine"); got != foreign {
		t.Errorf("the foreign table changed:\nbefore:\n%s\nafter:\n%s", foreign, got)
	}
	if err := pod1.PingWithin(blocked.IP, 2*time.Second); err == nil {
		t.Errorf("the foreign drop stopped holding after resyncs")
	}
}

// TestSwitchRulesModeLive: EnableNFTables switched iptables → nftables →
// iptables on a running cluster, node by node as a ConfigMap update reaches
// the nodes, under 100/s pings around the ring of nodes: nothing lost, and
// after each step each node holds overlayd's rules in the new mode only.
func TestSwitchRulesModeLive(t *testing.T) {
	const ipt = `{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}`
	const nft = `{"Network": "10.244.0.0/16", "EnableNFTables": true, "Backend": {"Type": "vxlan"}}`
	c := newCluster(t, clusterOptions{Nodes: 3, NetConf: ipt, Args: []string{"--ip-masq"}})
	var pingers []*lab.Pinger
	for i := range c.Lab.Nodes {
		src, dst := c.PodsOn(c.node(i))[0], c.PodsOn(c.node((i + 1) % len(c.Lab.Nodes)))[0]
		p, err := src.StartPinger(dst.IP, 10*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Stop() })
		pingers = append(pingers, p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, p := range pingers {
		if err := p.WaitReceived(ctx, 20); err != nil {
			t.Fatal(err)
		}
	}
	// Loss counts from here: what the switches cost, not the warm-up.
	before := make([]lab.PingStats, len(pingers))
	for i, p := range pingers {
		before[i] = p.Stats()
	}
	for _, nftables := range []bool{true, false} {
		conf, name := ipt, "iptables"
		if nftables {
			conf, name = nft, "nftables"
		}
		for _, n := range c.Lab.Nodes {
			c.writeNetConf(n, conf)
			t.Logf("%s: %s mode from %s", n.Name, name, time.Now().Format("15:04:05.000"))
			harness.Eventually(t, 30*time.Second, n.Name+" in "+name+" mode", func() (bool, string) {
				rules := iptablesSave(t, n, "nat") + iptablesSave(t, n, "filter")
				rs := nftRuleset(t, n)
				inIPT, inNFT := strings.Contains(rules, "OVERLAYD-POSTRTG"), strings.Contains(rs, "table inet overlayd")
				return inIPT != nftables && inNFT == nftables, rules + rs
			})
		}
		c.requireFullMesh(c.Pods)
	}
	settle(t, pingers, time.Second)
	sent, lost := 0, 0
	for i, p := range pingers {
		s := p.Stop()
		t.Logf("%s -> %s: %s", p.From.NS, p.To, s)
		for _, r := range p.LossRuns() {
			t.Logf("  %d lost from %s", r.Count, r.Start.Format("15:04:05.000"))
		}
		sent, lost = sent+s.Sent-before[i].Sent, lost+p.LostFrom(before[i].Sent)
	}
	t.Logf("iptables -> nftables -> iptables: %d of %d pings lost", lost, sent)
	if lost != 0 {
		t.Errorf("%d pings lost switching the rules' mode", lost)
	}
}
