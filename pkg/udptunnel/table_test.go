package udptunnel

import (
	"fmt"
	"net/netip"
	"testing"
)

func TestTableLookup(t *testing.T) {
	peers := map[netip.Prefix]netip.AddrPort{
		netip.MustParsePrefix("10.244.1.0/24"):   ap(netip.MustParseAddr("198.18.0.1")),
		netip.MustParsePrefix("10.244.2.0/24"):   ap(netip.MustParseAddr("198.18.0.2")),
		netip.MustParsePrefix("10.244.2.128/25"): ap(netip.MustParseAddr("198.18.0.3")), // more specific wins
		netip.MustParsePrefix("10.250.0.0/16"):   ap(netip.MustParseAddr("198.18.0.4")),
		netip.MustParsePrefix("10.244.3.7/24"):   ap(netip.MustParseAddr("198.18.0.5")), // host bits ignored
		netip.MustParsePrefix("fd00:1:2::/64"):   ap(netip.MustParseAddr("2001:db8::1")),
		netip.MustParsePrefix("fd00:1::/48"):     ap(netip.MustParseAddr("::ffff:198.18.0.6")), // mapped: unmapped
		netip.MustParsePrefix("fd00:9::/80"):     ap(netip.MustParseAddr("2001:db8::9")),
	}
	tbl, skipped := buildTable(peers, 8285, nil)
	if len(skipped) != 0 {
		t.Fatalf("skipped %v", skipped)
	}
	for dst, want := range map[string]string{
		"10.244.1.9":       "198.18.0.1",
		"10.244.2.1":       "198.18.0.2",
		"10.244.2.200":     "198.18.0.3",
		"10.250.99.1":      "198.18.0.4",
		"10.244.3.1":       "198.18.0.5",
		"10.244.4.1":       "",
		"192.168.0.1":      "",
		"fd00:1:2::5":      "2001:db8::1",
		"fd00:1:0:7::5":    "198.18.0.6",
		"fd00:9::ffff:1:2": "2001:db8::9",
		"fd00:9:0:0:1::1":  "",
		"fd00:2::1":        "",
	} {
		p := tbl.lookup(netip.MustParseAddr(dst))
		got := ""
		if p != nil {
			got = p.addr.String()
			if p.ep.AddrPort != netip.AddrPortFrom(p.addr, 8285) {
				t.Errorf("%s: endpoint %s, want %s:8285", dst, p.ep.AddrPort, p.addr)
			}
		}
		if got != want {
			t.Errorf("lookup(%s) = %q, want %q", dst, got, want)
		}
	}
	for _, src := range []string{"198.18.0.1", "198.18.0.6", "2001:db8::9"} {
		if !tbl.knownSource(netip.MustParseAddr(src)) {
			t.Errorf("%s not a known source", src)
		}
	}
	if tbl.knownSource(netip.MustParseAddr("198.18.0.99")) {
		t.Error("198.18.0.99 is a known source")
	}
}

func TestTableSkipsUnusableEntries(t *testing.T) {
	tbl, skipped := buildTable(map[netip.Prefix]netip.AddrPort{
		{}:                                     ap(netip.MustParseAddr("198.18.0.1")),
		netip.MustParsePrefix("10.244.1.0/24"): {},
		netip.MustParsePrefix("10.244.2.0/24"): ap(netip.MustParseAddr("0.0.0.0")),
		netip.MustParsePrefix("10.244.3.0/24"): ap(netip.MustParseAddr("239.1.1.1")),
		netip.MustParsePrefix("10.244.4.0/24"): ap(netip.MustParseAddr("198.18.0.4")),
		netip.MustParsePrefix("10.244.4.9/24"): ap(netip.MustParseAddr("198.18.0.5")), // same subnet, other peer
	}, 8285, nil)
	if len(skipped) != 5 {
		t.Fatalf("skipped %d entries, want 5: %q", len(skipped), skipped)
	}
	if tbl.peers != 1 || tbl.lookup(netip.MustParseAddr("10.244.4.1")).addr.String() != "198.18.0.4" {
		t.Fatalf("table kept %d peers; 10.244.4.1 -> %v", tbl.peers, tbl.lookup(netip.MustParseAddr("10.244.4.1")))
	}
	if tbl.knownSource(netip.MustParseAddr("198.18.0.5")) {
		t.Error("the losing duplicate became a known source")
	}
}

func BenchmarkTableLookup(b *testing.B) {
	for _, n := range []int{10, 1000, 5000} {
		peers := map[netip.Prefix]netip.AddrPort{}
		for i := range n {
			peers[netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)] =
				ap(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}))
		}
		tbl, _ := buildTable(peers, 8285, nil)
		dst := netip.AddrFrom4([4]byte{10, byte((n - 1) >> 8), byte(n - 1), 7})
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			for b.Loop() {
				if tbl.lookup(dst) == nil {
					b.Fatal("miss")
				}
			}
		})
	}
}

// ap is a peer address on the tunnel's own port.
func ap(a netip.Addr) netip.AddrPort { return netip.AddrPortFrom(a, 0) }

func TestTablePeerPort(t *testing.T) {
	tbl, _ := buildTable(map[netip.Prefix]netip.AddrPort{
		netip.MustParsePrefix("10.244.1.0/24"): netip.MustParseAddrPort("198.18.0.1:9000"),
		netip.MustParsePrefix("10.244.2.0/24"): ap(netip.MustParseAddr("198.18.0.2")),
	}, 8285, nil)
	if got := tbl.lookup(netip.MustParseAddr("10.244.1.9")).ep.AddrPort; got != netip.MustParseAddrPort("198.18.0.1:9000") {
		t.Errorf("peer with its own port: %s", got)
	}
	if got := tbl.lookup(netip.MustParseAddr("10.244.2.9")).ep.AddrPort; got != netip.MustParseAddrPort("198.18.0.2:8285") {
		t.Errorf("peer on the tunnel's port: %s", got)
	}
}

func TestTableExtraSources(t *testing.T) {
	tbl, _ := buildTable(map[netip.Prefix]netip.AddrPort{
		netip.MustParsePrefix("10.244.1.0/24"): ap(netip.MustParseAddr("198.18.0.1")),
	}, 8285, []netip.Addr{netip.MustParseAddr("198.18.0.9"), {}})
	for _, src := range []string{"198.18.0.1", "198.18.0.9"} {
		if !tbl.knownSource(netip.MustParseAddr(src)) {
			t.Errorf("%s not accepted as a source", src)
		}
	}
	if tbl.knownSource(netip.MustParseAddr("198.18.0.7")) {
		t.Error("an unknown address accepted as a source")
	}
	if tbl.lookup(netip.MustParseAddr("10.244.9.1")) != nil {
		t.Error("an extra source became a route")
	}
}
