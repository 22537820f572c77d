package backend_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/backend/hostgw"
	"github.com/overlayd/overlayd/backend/udp"
	"github.com/overlayd/overlayd/backend/vxlan"
	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/subnet"
)

var node = backend.Node{
	Name:    "node-a",
	Lease:   subnet.Lease{Node: "node-a", Subnet: netip.MustParsePrefix("10.244.1.0/24")},
	Network: netip.MustParsePrefix("10.244.0.0/16"),
	Underlay: &ip.External{
		Iface: ip.Interface{Name: "eth0", Index: 2, MTU: 1500, Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.0.11/24")}},
		Addr:  netip.MustParseAddr("198.18.0.11"), PublicIP: netip.MustParseAddr("198.18.0.11"),
	},
}

func peer(name, subnetStr, publicIP, typ, data string) subnet.Lease {
	return subnet.Lease{
		Node:   name,
		Subnet: netip.MustParsePrefix(subnetStr),
		Attrs: subnet.LeaseAttrs{
			PublicIP: netip.MustParseAddr(publicIP), BackendType: typ, BackendData: json.RawMessage(data),
		},
	}
}

func mustNew(t *testing.T, conf string) backend.Backend {
	t.Helper()
	_, b, err := backend.Load([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRegistry(t *testing.T) {
	if got := strings.Join(backend.Types(), ","); got != "host-gw,udp,vxlan" {
		t.Fatalf("types %s", got)
	}
}

func TestBackendConfigErrors(t *testing.T) {
	tests := []struct{ conf, key, has string }{
		{`{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}`, "Backend.Type", `unknown backend type "wireguard" (known: host-gw, udp, vxlan)`},
		{`{"Network":"10.244.0.0/16","Backend":{"Type":"VXLAN"}}`, "Backend.Type", `"VXLAN"`},
		{`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":0}}`, "Backend.VNI", "0 is not"},
		{`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}`, "Backend.VNI", "16777216"},
		{`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":"1"}}`, "Backend.VNI", "want a whole number, got a JSON string"},
		{`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":70000}}`, "Backend.Port", "70000"},
		{`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":100}}`, "Backend.MTU", "100"},
		{`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRoute":true}}`, "Backend.DirectRoute", "unknown key"},
		{`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Learning":"no"}}`, "Backend.Learning", "want true or false"},
		{`{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw","VNI":1}}`, "Backend.VNI", "unknown key"},
		{`{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":0}}`, "Backend.Port", "0 is not"},
		{`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"udp"}}`, "EnableIPv6", "the udp backend carries IPv4 only"},
	}
	for _, tt := range tests {
		_, _, err := backend.Load([]byte(tt.conf))
		var ce *netconf.Error
		if !errors.As(err, &ce) || ce.Key != tt.key || !strings.Contains(err.Error(), tt.has) {
			t.Errorf("%s: err = %v, want key %s containing %q", tt.conf, err, tt.key, tt.has)
		}
	}
}

func TestVXLAN(t *testing.T) {
	b := mustNew(t, `{"Network":"10.244.0.0/16"}`)
	if b.Type() != "vxlan" || b.MTU(node) != 1450 {
		t.Fatalf("type %s MTU %d", b.Type(), b.MTU(node))
	}
	data, err := b.Data(node, backend.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	mac := vxlan.VtepMAC("node-a", 1)
	if string(data) != `{"VNI":1,"VtepMAC":"`+mac.String()+`","Port":8472}` {
		t.Fatalf("data %s", data)
	}
	if mac[0]&0x03 != 0x02 || mac.String() != vxlan.VtepMAC("node-a", 1).String() || mac.String() == vxlan.VtepMAC("node-b", 1).String() {
		t.Fatalf("MAC %s is not stable, unicast, locally administered and per node", mac)
	}

	var st backend.State
	if err := b.Local(node, &st); err != nil {
		t.Fatal(err)
	}
	// A flanneld peer publishes exactly this.
	p := peer("node-b", "10.244.2.0/24", "198.18.0.12", "vxlan", `{"VNI":1,"VtepMAC":"0e:aa:00:00:00:02"}`)
	if err := b.Peer(node, p, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Links) != 1 {
		t.Fatalf("links %+v", st.Links)
	}
	l := st.Links[0]
	if l.Name != "overlay.1" || l.VXLAN != (kernel.VXLAN{VNI: 1, Port: 8472, Local: netip.MustParseAddr("198.18.0.11"), Underlay: "eth0"}) ||
		l.MTU != 1450 || l.Addrs[0] != netip.MustParsePrefix("10.244.1.0/32") {
		t.Fatalf("link %+v", l)
	}
	wantRoute := kernel.Route{Dst: p.Subnet, Gw: netip.MustParseAddr("10.244.2.0"), Dev: "overlay.1", OnLink: true}
	if len(st.Routes) != 1 || st.Routes[0] != wantRoute {
		t.Fatalf("routes %+v", st.Routes)
	}
	if len(st.Neighs) != 1 || st.Neighs[0].IP != netip.MustParseAddr("10.244.2.0") || st.Neighs[0].MAC.String() != "0e:aa:00:00:00:02" {
		t.Fatalf("neighs %+v", st.Neighs)
	}
	if len(st.FDB) != 1 || st.FDB[0].Dst != netip.MustParseAddr("198.18.0.12") || st.FDB[0].MAC.String() != "0e:aa:00:00:00:02" {
		t.Fatalf("fdb %+v", st.FDB)
	}

	for _, bad := range []string{``, `{}`, `{"VNI":1}`, `{"VNI":1,"VtepMAC":"zz"}`, `{"VNI":0,"VtepMAC":"0e:aa:00:00:00:02"}`, `[1]`} {
		err := b.Peer(node, peer("node-x", "10.244.9.0/24", "198.18.0.19", "vxlan", bad), &st)
		if s, ok := backend.IsSkip(err); !ok || s.Reason != backend.SkipBadBackendData {
			t.Errorf("backend-data %q: err = %v, want a bad_backend_data skip", bad, err)
		}
	}
}

func TestVXLANPeerOnOtherVNIAndPort(t *testing.T) {
	b := mustNew(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1}}`)
	var st backend.State
	b.Local(node, &st)
	if err := b.Peer(node, peer("node-b", "10.244.2.0/24", "198.18.0.12", "vxlan", `{"VNI":2,"VtepMAC":"0e:aa:00:00:00:02","Port":4789}`), &st); err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Link("overlay.2p4789"); !ok || len(st.Links) != 2 {
		t.Fatalf("links %+v", st.Links)
	}
	if st.Routes[0].Dev != "overlay.2p4789" {
		t.Fatalf("route %+v", st.Routes[0])
	}
}

func TestVXLANDirectRouting(t *testing.T) {
	b := mustNew(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}`)
	var st backend.State
	b.Local(node, &st)
	data := `{"VNI":1,"VtepMAC":"0e:aa:00:00:00:02"}`
	b.Peer(node, peer("near", "10.244.2.0/24", "198.18.0.12", "vxlan", data), &st)
	b.Peer(node, peer("far", "10.244.3.0/24", "198.19.7.13", "vxlan", data), &st)
	if st.Routes[0] != (kernel.Route{Dst: netip.MustParsePrefix("10.244.2.0/24"), Gw: netip.MustParseAddr("198.18.0.12"), Dev: "eth0"}) {
		t.Fatalf("on-link peer not routed directly: %+v", st.Routes[0])
	}
	if st.Routes[1].Dev != "overlay.1" || len(st.FDB) != 1 {
		t.Fatalf("off-link peer not encapsulated: %+v %+v", st.Routes[1], st.FDB)
	}
}

func TestHostGW(t *testing.T) {
	b := mustNew(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}`)
	if b.MTU(node) != 1500 {
		t.Fatalf("MTU %d", b.MTU(node))
	}
	if d, err := b.Data(node, backend.IPv4); err != nil || d != nil {
		t.Fatalf("data %s %v", d, err)
	}
	var st backend.State
	if err := b.Peer(node, peer("near", "10.244.2.0/24", "198.18.0.12", hostgw.Type, ``), &st); err != nil {
		t.Fatal(err)
	}
	if st.Routes[0] != (kernel.Route{Dst: netip.MustParsePrefix("10.244.2.0/24"), Gw: netip.MustParseAddr("198.18.0.12"), Dev: "eth0"}) {
		t.Fatalf("route %+v", st.Routes[0])
	}
	err := b.Peer(node, peer("far", "10.244.3.0/24", "198.19.7.13", hostgw.Type, ``), &st)
	if s, ok := backend.IsSkip(err); !ok || s.Reason != backend.SkipNotOnLink || !strings.Contains(err.Error(), "198.19.7.13") {
		t.Fatalf("off-link peer: err = %v", err)
	}
	if len(st.Routes) != 1 || len(st.Links) != 0 {
		t.Fatalf("off-link peer got state: %+v", st)
	}
}

func TestUDP(t *testing.T) {
	b := mustNew(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}`)
	if b.MTU(node) != 1472 {
		t.Fatalf("MTU %d", b.MTU(node))
	}
	var st backend.State
	if err := b.Local(node, &st); err != nil {
		t.Fatal(err)
	}
	if err := b.Peer(node, peer("node-b", "10.244.2.0/24", "198.18.0.12", udp.Type, ``), &st); err != nil {
		t.Fatal(err)
	}
	if err := b.Peer(node, peer("node-c", "10.244.3.0/24", "198.19.7.13", udp.Type, `{"Port":9000}`), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Links) != 1 || st.Links[0].Kind != kernel.KindTUN || st.Links[0].Name != "overlay0" {
		t.Fatalf("links %+v", st.Links)
	}
	spec, ok := st.Datapath(udp.Type).(*udp.Spec)
	if !ok || spec.Port != 8285 || spec.Device != "overlay0" || len(spec.Peers) != 2 ||
		spec.Peers[netip.MustParsePrefix("10.244.2.0/24")] != netip.MustParseAddrPort("198.18.0.12:8285") ||
		spec.Peers[netip.MustParsePrefix("10.244.3.0/24")] != netip.MustParseAddrPort("198.19.7.13:9000") {
		t.Fatalf("udp datapath %+v", st.Datapaths)
	}
	if st.Routes[0] != (kernel.Route{Dst: netip.MustParsePrefix("10.244.2.0/24"), Dev: "overlay0"}) {
		t.Fatalf("route %+v", st.Routes[0])
	}
}

// Two parts of the desired state may want the same datapath: their peers
// are joined, a copy shares nothing with the original, and two ports for
// one device are refused.
func TestStateMergesDatapaths(t *testing.T) {
	b := mustNew(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}`)
	var one, two backend.State
	if err := b.Peer(node, peer("node-b", "10.244.2.0/24", "198.18.0.12", udp.Type, ``), &one); err != nil {
		t.Fatal(err)
	}
	if err := b.Peer(node, peer("node-c", "10.244.3.0/24", "198.18.0.13", udp.Type, ``), &two); err != nil {
		t.Fatal(err)
	}
	merged := one.Clone()
	if err := merged.Merge(two); err != nil {
		t.Fatal(err)
	}
	if n := len(merged.Datapath(udp.Type).(*udp.Spec).Peers); n != 2 {
		t.Fatalf("merged udp peers: %d, want 2", n)
	}
	if n := len(one.Datapath(udp.Type).(*udp.Spec).Peers); n != 1 {
		t.Fatalf("merging into a clone changed the original: %d peers", n)
	}
	if len(merged.Links) != 1 || len(merged.Routes) != 2 {
		t.Fatalf("merged kernel state %+v", merged.State)
	}

	other := mustNew(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":9000}}`)
	var three backend.State
	if err := other.Local(node, &three); err != nil {
		t.Fatal(err)
	}
	if err := merged.Merge(three); err == nil || !strings.Contains(err.Error(), "udp datapath wanted on both") {
		t.Fatalf("two ports for one device: %v", err)
	}
}

// MTU is the underlay's MTU, as flanneld reads vxlan's key: pods and the
// device get it less the encapsulation. udp's (an overlayd option) reads the
// same way.
func TestMTUKeyIsTheUnderlayMTU(t *testing.T) {
	for _, tc := range []struct {
		conf string
		want int
	}{
		{`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":1400}}`, 1350},
		{`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`, 1450},
		{`{"Network":"10.244.0.0/16","Backend":{"Type":"udp","MTU":1400}}`, 1372},
		{`{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}`, 1472},
	} {
		b := mustNew(t, tc.conf)
		if got := b.MTU(node); got != tc.want {
			t.Errorf("%s: pod MTU %d, want %d", tc.conf, got, tc.want)
		}
		var st backend.State
		if err := b.Local(node, &st); err != nil {
			t.Fatal(err)
		}
		if st.Links[0].MTU != tc.want {
			t.Errorf("%s: device MTU %d, want %d", tc.conf, st.Links[0].MTU, tc.want)
		}
	}
	if _, _, err := backend.Load([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":600}}`)); err == nil ||
		!strings.Contains(err.Error(), "Backend.MTU: 600 is not a usable underlay MTU (626 to 65535") {
		t.Errorf("MTU 600 for vxlan: %v", err)
	}
}

// Every VNI and port has a device name the kernel takes (at most 15
// characters), readable where it fits, and distinct for distinct pairs.
func TestVXLANDeviceNames(t *testing.T) {
	for _, tc := range []struct {
		vni, port int
		want      string
	}{
		{1, 8472, "overlay.1"},
		{1, 4789, "overlay.1p4789"},
		{4096, 8472, "overlay.4096"},
		{4096, 4789, "vx4096p4789"},
		{16777215, 8472, "vx16777215p8472"},
	} {
		if got := vxlan.DeviceName(tc.vni, tc.port); got != tc.want {
			t.Errorf("DeviceName(%d, %d) = %q, want %q", tc.vni, tc.port, got, tc.want)
		}
	}
	seen := map[string]string{}
	for _, vni := range []int{1, 9, 10, 99, 100, 4096, 99999, 1 << 23, 1<<24 - 1} {
		for _, port := range []int{1, 80, 4789, 8472, 9999, 10000, 65535} {
			name := vxlan.DeviceName(vni, port)
			if len(name) > 15 || name == "" {
				t.Errorf("DeviceName(%d, %d) = %q: not a kernel device name", vni, port, name)
			}
			key := fmt.Sprint(vni, port)
			if prev, dup := seen[name]; dup {
				t.Errorf("DeviceName(%d, %d) = %q, as for %s", vni, port, name, prev)
			}
			seen[name] = key
		}
	}
}

// flanneld's Windows-only vxlan keys are accepted and change nothing, as
// flanneld on Linux ignores them.
func TestVXLANWindowsKeysIgnored(t *testing.T) {
	b := mustNew(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":4096,"Port":4789,"MacPrefix":"0E-2A","Name":"flannel.4096"}}`)
	var st backend.State
	if err := b.Local(node, &st); err != nil {
		t.Fatal(err)
	}
	if st.Links[0].Name != "vx4096p4789" {
		t.Errorf("device %s", st.Links[0].Name)
	}
}
