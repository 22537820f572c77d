package rules

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap/zaptest"
)

// The ingress filter, with real datagrams: a peer's reach the tunnel port,
// anyone else's are dropped and counted; a peer added or removed is let in
// or shut out at the next Ensure, or by ChangeSenders; ports that are no
// tunnel's are left alone;
// switched off, the chain and the sets go. In both modes and families.
func TestIngressOnlyFromPeers(t *testing.T) {
	for _, mode := range []string{"iptables", "nftables"} {
		t.Run(mode, func(t *testing.T) {
			guardHost(t)
			guardHostNFT(t)
			node, peer, rogue := newNS(t, "in-node"), newNS(t, "in-peer"), newNS(t, "in-rogue")
			veth(t, node, "p0", "198.18.9.1/24", peer, "eth0", "198.18.9.2/24")
			veth(t, node, "r0", "198.18.10.1/24", rogue, "eth0", "198.18.10.2/24")
			for _, ns := range []*testNS{peer, rogue} {
				ns.ip(t, "-6", "addr", "add", map[*testNS]string{peer: "fd00:198:9::2/64", rogue: "fd00:198:10::2/64"}[ns], "dev", "eth0", "nodad")
			}
			node.ip(t, "-6", "addr", "add", "fd00:198:9::1/64", "dev", "p0", "nodad")
			node.ip(t, "-6", "addr", "add", "fd00:198:10::1/64", "dev", "r0", "nodad")
			m := NewModes(zaptest.NewLogger(t))
			ensure := func(in Ingress) {
				t.Helper()
				cfg := Config{Network: net4, Subnet: sub4, IPv6Network: net6, IPv6Subnet: sub6, ForwardRules: true, NFTables: mode == "nftables", Ingress: in}
				if err := node.do(t, func() error { _, err := m.Ensure(cfg); return err }); err != nil {
					t.Fatal(err)
				}
			}
			in := Ingress{Ports: []int{8472, 8285}, Senders: []netip.Addr{netip.MustParseAddr("198.18.9.2"), netip.MustParseAddr("fd00:198:9::2")}}
			ensure(in)

			tunnel := node.listenUDP(t, "[::]:8472")
			other := node.listenUDP(t, "[::]:9999")
			if src := sourceSeen(t, peer, "198.18.9.1:8472", tunnel, "from the peer"); src != netip.MustParseAddr("198.18.9.2") {
				t.Errorf("peer's datagram arrived from %s", src)
			}
			if src := sourceSeen(t, peer, "[fd00:198:9::1]:8472", tunnel, "from the peer, IPv6"); src != netip.MustParseAddr("fd00:198:9::2") {
				t.Errorf("peer's IPv6 datagram arrived from %s", src)
			}
			sourceSeen(t, rogue, "198.18.10.1:9999", other, "to another port") // neighbours resolved
			for i := range 5 {
				rogue.sendUDP(t, "198.18.10.1:8472", fmt.Sprint("rogue ", i))
				rogue.sendUDP(t, "[fd00:198:10::1]:8472", fmt.Sprint("rogue6 ", i))
				rogue.sendUDP(t, "198.18.10.1:8285", fmt.Sprint("rogue udp ", i))
			}
			// A peer's datagram sent after them: had any of theirs got
			// through, it would be there before this one.
			sourceSeen(t, peer, "198.18.9.1:8472", tunnel, "marker")
			if got := received(t, tunnel); len(got) != 0 {
				t.Errorf("a non-peer reached the tunnel port: %q", got)
			}
			// A scrape reads the kernel's counters, with no Ensure between.
			before := counterSum(t)
			// (Collect itself: a registry's Gather collects on other
			// goroutines, outside the node's namespace.)
			if err := node.do(t, func() error {
				ch := make(chan prometheus.Metric, 10)
				ingressCollector{}.Collect(ch)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if d := counterSum(t) - before; d < 10 {
				t.Errorf("a scrape: overlayd_ingress_dropped_packets_total grew by %v, want at least the 10 datagrams to 8472", d)
			}

			// The rogue becomes a peer: let in at once; the peer leaves.
			ensure(Ingress{Ports: in.Ports, Senders: []netip.Addr{netip.MustParseAddr("198.18.10.2")}})
			if src := sourceSeen(t, rogue, "198.18.10.1:8472", tunnel, "now a peer"); src != netip.MustParseAddr("198.18.10.2") {
				t.Errorf("new peer's datagram arrived from %s", src)
			}
			received(t, tunnel)
			peer.sendUDP(t, "198.18.9.1:8472", "a departed peer")
			sourceSeen(t, rogue, "198.18.10.1:8472", tunnel, "marker 2")
			if got := received(t, tunnel); len(got) != 0 {
				t.Errorf("a departed peer still reaches the tunnel port: %q", got)
			}

			// ChangeSenders, as a pass after one peer changed does it: the
			// peer is back, the other gone, nothing else rewritten.
			if err := node.do(t, func() error {
				return m.ChangeSenders([]netip.Addr{netip.MustParseAddr("198.18.9.2"), netip.MustParseAddr("fd00:198:9::2")},
					[]netip.Addr{netip.MustParseAddr("198.18.10.2")})
			}); err != nil {
				t.Fatal(err)
			}
			if src := sourceSeen(t, peer, "[fd00:198:9::1]:8472", tunnel, "back, IPv6"); src != netip.MustParseAddr("fd00:198:9::2") {
				t.Errorf("returning peer's IPv6 datagram arrived from %s", src)
			}
			rogue.sendUDP(t, "198.18.10.1:8472", "a peer gone again")
			sourceSeen(t, peer, "198.18.9.1:8472", tunnel, "marker 3")
			if got := received(t, tunnel); len(got) != 0 {
				t.Errorf("a peer removed by ChangeSenders still reaches the tunnel port: %q", got)
			}

			// Off: everything reaches the port again, nothing of the filter is left.
			ensure(Ingress{})
			sourceSeen(t, peer, "198.18.9.1:8472", tunnel, "no filter")
			left := node.exec(t, "iptables-save") + node.exec(t, "nft", "list", "ruleset")
			if strings.Contains(left, "OVERLAYD-INPUT") || strings.Contains(left, "peers4") || strings.Contains(left, "chain input") {
				t.Errorf("the filter is left:\n%s", left)
			}
			if err := node.do(t, func() error {
				sets, err := netlink.IpsetListAll()
				for _, set := range sets {
					if strings.HasPrefix(set.SetName, "overlayd") {
						t.Errorf("the peer set %s is left", set.SetName)
					}
				}
				return err
			}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func counterSum(t *testing.T) float64 {
	t.Helper()
	var sum float64
	for _, f := range []string{"ipv4", "ipv6", "nftables"} {
		sum += counterValue(ingressDropped.c.WithLabelValues(f))
	}
	return sum
}

// Thousands of peers at a start go into the set many to a netlink write
// (pkg/nlbatch): all of them land, of both families, and a later change
// adds and removes only the difference.
func TestPeerSetBatched(t *testing.T) {
	ns := newNS(t, "peerset")
	var v4, v6 []netip.Addr
	for i := range 600 {
		v4 = append(v4, netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(1 + i%250)}))
		v6 = append(v6, netip.AddrFrom16([16]byte{0xfd, 0, 15: byte(i), 14: byte(i >> 8)}))
	}
	ensure := func(v6 bool, addrs []netip.Addr) int {
		t.Helper()
		var n int
		if err := ns.do(t, func() (err error) {
			n, err = ensurePeerSet(v6, addrs)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := ensure(false, v4); n != 600 {
		t.Fatalf("IPv4: %d changes, want 600", n)
	}
	if n := ensure(true, v6); n != 600 {
		t.Fatalf("IPv6: %d changes, want 600", n)
	}
	for _, set := range []string{peerSetName(false), peerSetName(true)} {
		if out := ns.exec(t, "ipset", "list", set); !strings.Contains(out, "Number of entries: 600") {
			t.Errorf("ipset %s:\n%s", set, out)
		}
	}
	if n := ensure(false, append(v4[100:], netip.MustParseAddr("198.19.0.1"))); n != 101 {
		t.Fatalf("changing the IPv4 set: %d changes, want 101 (100 removed, 1 added)", n)
	}
}
