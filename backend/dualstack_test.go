package backend_test

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/backend/vxlan"
	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/subnet"
)

// dual is a dual-stack node with an underlay of both families.
var dual = backend.Node{
	Name: "node-a",
	Lease: subnet.Lease{Node: "node-a", Subnet: netip.MustParsePrefix("10.244.1.0/24"),
		IPv6Subnet: netip.MustParsePrefix("fd00:10:244:1::/64")},
	Network:     netip.MustParsePrefix("10.244.0.0/16"),
	IPv6Network: netip.MustParsePrefix("fd00:10:244::/56"),
	Underlay: &ip.External{
		Iface: ip.Interface{Name: "eth0", Index: 2, MTU: 1500, Addrs: []netip.Prefix{
			netip.MustParsePrefix("198.18.0.11/24"), netip.MustParsePrefix("fd00:198:18::11/64")}},
		Addr: netip.MustParseAddr("198.18.0.11"), PublicIP: netip.MustParseAddr("198.18.0.11"),
		Addr6: netip.MustParseAddr("fd00:198:18::11"), PublicIPv6: netip.MustParseAddr("fd00:198:18::11"),
	},
}

// v6only is the same node in an IPv6-only cluster.
var v6only = func() backend.Node {
	n := dual
	n.Network, n.Lease.Subnet = netip.Prefix{}, netip.Prefix{}
	return n
}()

func dualPeer(name string, v4, pub4, v6, pub6 string, typ string, data, data6 string) subnet.Lease {
	l := subnet.Lease{Node: name, Attrs: subnet.LeaseAttrs{BackendType: typ, BackendData: json.RawMessage(data), BackendV6Data: json.RawMessage(data6)}}
	if v4 != "" {
		l.Subnet, l.Attrs.PublicIP = netip.MustParsePrefix(v4), netip.MustParseAddr(pub4)
	}
	if v6 != "" {
		l.IPv6Subnet, l.Attrs.PublicIPv6 = netip.MustParsePrefix(v6), netip.MustParseAddr(pub6)
	}
	return l
}

// vxlan on a dual-stack node: a device per family, each on the underlay
// address of its family with the VTEP address of its subnet; a peer is
// reached over both, each family through its own device and to its own
// public address, as flanneld does.
func TestVXLANDualStack(t *testing.T) {
	b := mustNew(t, `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`)
	var st backend.State
	if err := b.Local(dual, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Links) != 2 || st.Links[0].Name != "overlay.1" || st.Links[1].Name != "overlay-v6.1" {
		t.Fatalf("links %+v", st.Links)
	}
	v6 := st.Links[1]
	if v6.VXLAN.Local != netip.MustParseAddr("fd00:198:18::11") || v6.Addrs[0] != netip.MustParsePrefix("fd00:10:244:1::/128") ||
		!v6.NoRouterAdvertisements || v6.MAC.String() != vxlan.VtepMAC6("node-a", 1).String() || v6.MTU != 1430 {
		t.Errorf("IPv6 device %+v", v6)
	}
	if st.Links[0].NoRouterAdvertisements {
		t.Error("router advertisements switched off on the IPv4 device")
	}
	d6, err := b.Data(dual, backend.IPv6)
	if err != nil || !strings.Contains(string(d6), vxlan.VtepMAC6("node-a", 1).String()) {
		t.Errorf("IPv6 backend data %s %v", d6, err)
	}

	peer := dualPeer("node-b", "10.244.2.0/24", "198.18.0.12", "fd00:10:244:2::/64", "fd00:198:18::12", "vxlan",
		`{"VNI":1,"VtepMAC":"0e:00:00:00:00:12"}`, `{"VNI":1,"VtepMAC":"0e:00:00:00:06:12"}`)
	if err := b.Peer(dual, peer, &st); err != nil {
		t.Fatal(err)
	}
	want := []kernel.Route{
		{Dst: netip.MustParsePrefix("10.244.2.0/24"), Gw: netip.MustParseAddr("10.244.2.0"), Dev: "overlay.1", OnLink: true},
		{Dst: netip.MustParsePrefix("fd00:10:244:2::/64"), Gw: netip.MustParseAddr("fd00:10:244:2::"), Dev: "overlay-v6.1", OnLink: true},
	}
	if len(st.Routes) != 2 || st.Routes[0] != want[0] || st.Routes[1] != want[1] {
		t.Errorf("routes %+v", st.Routes)
	}
	if len(st.FDB) != 2 || st.FDB[1].Dst != netip.MustParseAddr("fd00:198:18::12") || st.FDB[1].Dev != "overlay-v6.1" ||
		st.Neighs[1].IP != netip.MustParseAddr("fd00:10:244:2::") || st.Neighs[1].MAC.String() != "0e:00:00:00:06:12" {
		t.Errorf("IPv6 entries: FDB %+v neighbours %+v", st.FDB, st.Neighs)
	}
}

// A peer without IPv6 (an IPv4-only node in a dual-stack cluster) is
// reached over IPv4; the IPv6 half is a partial skip, not the whole peer.
func TestVXLANPeerWithoutIPv6IsAPartialSkip(t *testing.T) {
	b := mustNew(t, `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`)
	var st backend.State
	peer := dualPeer("node-c", "10.244.3.0/24", "198.18.0.13", "", "", "vxlan", `{"VNI":1,"VtepMAC":"0e:00:00:00:00:13"}`, ``)
	err := b.Peer(dual, peer, &st)
	s, ok := backend.IsSkip(err)
	if !ok || s.Family != "IPv6" || s.Reason != backend.SkipMissingFamily {
		t.Fatalf("err %v, want a partial IPv6 skip", err)
	}
	if len(st.Routes) != 1 || st.Routes[0].Dev != "overlay.1" {
		t.Errorf("IPv4 half not added: %+v", st.Routes)
	}
	// Bad IPv6 data skips the IPv6 half only.
	st = backend.State{}
	peer = dualPeer("node-d", "10.244.4.0/24", "198.18.0.14", "fd00:10:244:4::/64", "fd00:198:18::14", "vxlan", `{"VNI":1,"VtepMAC":"0e:00:00:00:00:14"}`, `{"VNI":1}`)
	if s, ok := backend.IsSkip(b.Peer(dual, peer, &st)); !ok || s.Family != "IPv6" || s.Reason != backend.SkipBadBackendData || len(st.Routes) != 1 {
		t.Errorf("bad IPv6 data: %v, routes %+v", s, st.Routes)
	}
	// Nothing reachable: the whole peer.
	st = backend.State{}
	peer = dualPeer("node-e", "", "", "", "", "vxlan", ``, ``)
	if s, ok := backend.IsSkip(b.Peer(dual, peer, &st)); !ok || s.Family != "" || len(st.Routes) != 0 {
		t.Errorf("nothing reachable: %v, routes %+v", s, st.Routes)
	}
}

// IPv6-only: one IPv6 device, IPv6 routes only; DirectRouting for an IPv6
// peer on the same link.
func TestVXLANIPv6Only(t *testing.T) {
	b := mustNew(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan","DirectRouting":true}}`)
	var st backend.State
	if err := b.Local(v6only, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Links) != 1 || st.Links[0].Name != "overlay-v6.1" {
		t.Fatalf("links %+v", st.Links)
	}
	near := dualPeer("node-b", "", "", "fd00:10:244:2::/64", "fd00:198:18::12", "vxlan", ``, `{"VNI":1,"VtepMAC":"0e:00:00:00:06:12"}`)
	far := dualPeer("node-f", "", "", "fd00:10:244:6::/64", "fd00:198:19::16", "vxlan", ``, `{"VNI":1,"VtepMAC":"0e:00:00:00:06:16"}`)
	for _, p := range []subnet.Lease{near, far} {
		if err := b.Peer(v6only, p, &st); err != nil {
			t.Fatal(err)
		}
	}
	if st.Routes[0] != (kernel.Route{Dst: netip.MustParsePrefix("fd00:10:244:2::/64"), Gw: netip.MustParseAddr("fd00:198:18::12"), Dev: "eth0"}) {
		t.Errorf("on-link IPv6 peer: %+v", st.Routes[0])
	}
	if st.Routes[1].Dev != "overlay-v6.1" || !st.Routes[1].OnLink {
		t.Errorf("IPv6 peer across a router: %+v", st.Routes[1])
	}
}

// host-gw routes each family via the peer's address of it on the link.
func TestHostGWDualStack(t *testing.T) {
	b := mustNew(t, `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}`)
	var st backend.State
	peer := dualPeer("node-b", "10.244.2.0/24", "198.18.0.12", "fd00:10:244:2::/64", "fd00:198:18::12", "host-gw", ``, ``)
	if err := b.Peer(dual, peer, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Routes) != 2 || st.Routes[1] != (kernel.Route{Dst: netip.MustParsePrefix("fd00:10:244:2::/64"), Gw: netip.MustParseAddr("fd00:198:18::12"), Dev: "eth0"}) {
		t.Errorf("routes %+v", st.Routes)
	}
	// IPv6 address off the link: the IPv6 half is skipped, IPv4 stays.
	st = backend.State{}
	peer = dualPeer("node-f", "10.244.6.0/24", "198.18.0.16", "fd00:10:244:6::/64", "fd00:198:19::16", "host-gw", ``, ``)
	if s, ok := backend.IsSkip(b.Peer(dual, peer, &st)); !ok || s.Family != "IPv6" || s.Reason != backend.SkipNotOnLink || len(st.Routes) != 1 {
		t.Errorf("IPv6 off link: %v, routes %+v", s, st.Routes)
	}
}

// flanneld's IPv6 vxlan device is taken over as overlayd's IPv6 device.
func TestVXLANTakesOverFlanneldsIPv6Device(t *testing.T) {
	b := mustNew(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`)
	a := b.(backend.Adopter)
	for name, want := range map[string]string{"flannel.1": "overlay.1", "flannel-v6.1": "overlay-v6.1", "flannel-v6.4096": "overlay-v6.4096"} {
		vni := 1
		if strings.HasSuffix(name, "4096") {
			vni = 4096
		}
		to, ok := a.TakeOver(kernel.LinkInfo{Name: name, Type: "vxlan", VNI: vni, Port: 8472})
		if !ok || to.Rename != want {
			t.Errorf("%s: %+v %v, want a rename to %s", name, to, ok, want)
		}
	}
	if _, ok := a.TakeOver(kernel.LinkInfo{Name: "flannel.1", Type: "vxlan", VNI: 2, Port: 8472}); ok {
		t.Error("flannel.1 with VNI 2 is not flanneld's device of VNI 1")
	}
}
