package reconcile

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/overlayd/overlayd/backend"
	_ "github.com/overlayd/overlayd/backend/hostgw"
	_ "github.com/overlayd/overlayd/backend/udp"
	"github.com/overlayd/overlayd/backend/vxlan"
	"github.com/overlayd/overlayd/pkg/health"
	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/subnet"
)

// These tests cover the desired-state computation, a pure function of
// configuration and leases; what the kernel and the API server make of it
// is covered by the end-to-end tests.

type staticLeases struct{ peers []subnet.Lease }

func (s *staticLeases) Acquire(context.Context, subnet.LeaseAttrs) (subnet.Lease, error) {
	return subnet.Lease{}, nil
}
func (s *staticLeases) Publish(context.Context, subnet.LeaseAttrs) error { return nil }
func (s *staticLeases) Run(ctx context.Context) error                    { <-ctx.Done(); return nil }
func (s *staticLeases) Peers() ([]subnet.Lease, bool)                    { return s.peers, true }
func (s *staticLeases) Changed() <-chan struct{}                         { return nil }
func (s *staticLeases) NodeAddresses() (subnet.NodeAddresses, bool) {
	return subnet.NodeAddresses{}, true
}
func (s *staticLeases) ChangedPeers() ([]string, bool) { return nil, true }
func (s *staticLeases) Peer(node string) (subnet.Lease, bool) {
	for _, p := range s.peers {
		if p.Node == node {
			return p, true
		}
	}
	return subnet.Lease{}, false
}

func newTestLoop(t *testing.T, netConf string, peers ...subnet.Lease) *Loop {
	t.Helper()
	cfg, be, err := backend.Load([]byte(netConf))
	if err != nil {
		t.Fatal(err)
	}
	d := New(Config{
		NodeName: "node-a",
		Net:      cfg,
		Backend:  be,
		Leases:   &staticLeases{peers: peers},
		Underlay: &ip.External{
			Iface: ip.Interface{Name: "eth0", Index: 2, MTU: 1500, Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.0.11/24")}},
			Addr:  netip.MustParseAddr("198.18.0.11"), PublicIP: netip.MustParseAddr("198.18.0.11"),
		},
		Status: health.NewStatus(time.Minute),
		Log:    zaptest.NewLogger(t),
	})
	d.node = backend.Node{Name: "node-a", Network: cfg.Network, Underlay: d.cfg.Underlay,
		Lease: subnet.Lease{Node: "node-a", Subnet: netip.MustParsePrefix("10.244.1.0/24")}}
	return d
}

func lease(name, sub, pub, typ, data string) subnet.Lease {
	return subnet.Lease{Node: name, Subnet: netip.MustParsePrefix(sub), Attrs: subnet.LeaseAttrs{
		PublicIP: netip.MustParseAddr(pub), BackendType: typ, BackendData: json.RawMessage(data)}}
}

func vxData(node string) string {
	return `{"VNI":1,"VtepMAC":"` + vxlan.VtepMAC(node, 1).String() + `","Port":8472}`
}

func routeTo(st backend.State, dst string) (kernel.Route, bool) {
	for _, r := range st.Routes {
		if r.Dst == netip.MustParsePrefix(dst) {
			return r, true
		}
	}
	return kernel.Route{}, false
}

// Each peer is reached by the means it publishes, whatever our own backend.
func TestDesiredMixesBackendsByPeer(t *testing.T) {
	d := newTestLoop(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}`)
	st, err := d.desired([]subnet.Lease{
		lease("b", "10.244.2.0/24", "198.18.0.12", "vxlan", vxData("b")),
		lease("c", "10.244.3.0/24", "198.18.0.13", "host-gw", ``),
		lease("d", "10.244.4.0/24", "198.18.0.14", "udp", `{"Port":8285}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := routeTo(st, "10.244.2.0/24"); r.Dev != "overlay.1" || !r.OnLink {
		t.Errorf("vxlan peer route %+v", r)
	}
	if r, _ := routeTo(st, "10.244.3.0/24"); r.Dev != "eth0" || r.Gw != netip.MustParseAddr("198.18.0.13") {
		t.Errorf("host-gw peer route %+v", r)
	}
	if r, _ := routeTo(st, "10.244.4.0/24"); r.Dev != "overlay0" {
		t.Errorf("udp peer route %+v", r)
	}
	if st.Datapath("udp") == nil {
		t.Errorf("datapaths %+v, want the udp peer's", st.Datapaths)
	}
	if len(st.Links) != 2 {
		t.Errorf("links %+v, want the vxlan device and the TUN", st.Links)
	}
	// Every peer may send to this node's datapath, whatever reaches it.
	if fmt.Sprint(st.Senders) != "[198.18.0.12 198.18.0.13 198.18.0.14]" {
		t.Errorf("senders %v, want every peer's public IP", st.Senders)
	}
}

// A bad peer is skipped without leaving anything behind and without
// affecting the good ones; one that recovers is reached again.
func TestDesiredSkipsBadPeers(t *testing.T) {
	d := newTestLoop(t, `{"Network":"10.244.0.0/16"}`)
	good := lease("b", "10.244.2.0/24", "198.18.0.12", "vxlan", vxData("b"))
	bad := lease("c", "10.244.3.0/24", "198.18.0.13", "vxlan", `{"VNI":1}`)
	unknown := lease("e", "10.244.5.0/24", "198.18.0.15", "wireguard", `{}`)
	farHostGW := lease("f", "10.244.6.0/24", "198.19.7.16", "host-gw", ``)
	st, err := d.desired([]subnet.Lease{good, bad, unknown, farHostGW})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Routes) != 1 || len(st.Neighs) != 1 || len(st.FDB) != 1 {
		t.Fatalf("state %+v, want only the good peer", st.State)
	}
	if !strings.Contains(d.peers.skipped["c"], "bad_backend_data") || !strings.Contains(d.peers.skipped["e"], "unknown_backend") || !strings.Contains(d.peers.skipped["f"], "not_on_link") {
		t.Fatalf("skips %v", d.peers.skipped)
	}

	fixed := lease("c", "10.244.3.0/24", "198.18.0.13", "vxlan", vxData("c"))
	st, _ = d.desired([]subnet.Lease{good, fixed})
	if len(st.Routes) != 2 {
		t.Fatalf("recovered peer not reached: %+v", st.Routes)
	}
	if len(d.peers.skipped) != 0 {
		t.Fatalf("skips not forgotten: %v", d.peers.skipped)
	}
}

// A new backend keeps the old one's receiving side while it drains; a
// change that cannot be applied live is refused.
func TestReloadDrainsOldBackend(t *testing.T) {
	d := newTestLoop(t, `{"Network":"10.244.0.0/16"}`)
	if err := d.Reload([]byte(`{"Network":"10.245.0.0/16","Backend":{"Type":"host-gw"}}`)); err == nil || !strings.Contains(err.Error(), "Network: changed") {
		t.Fatalf("changed Network: err = %v", err)
	}
	if err := d.Reload([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"bogus"}}`)); err == nil {
		t.Fatal("invalid config accepted")
	}
	if d.pending.Load() != nil {
		t.Fatal("refused config pending")
	}

	if err := d.Reload([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}`)); err != nil {
		t.Fatal(err)
	}
	d.applyPending()
	if d.cfg.Backend.Type() != "udp" || len(d.drains) != 1 {
		t.Fatalf("backend %s drains %d", d.cfg.Backend.Type(), len(d.drains))
	}
	st, err := d.desired(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Link("overlay0"); !ok {
		t.Error("new backend's TUN missing")
	}
	if _, ok := st.Link("overlay.1"); !ok {
		t.Error("old backend's vxlan device not kept while draining")
	}
	d.drains = nil
	st, _ = d.desired(nil)
	if _, ok := st.Link("overlay.1"); ok {
		t.Error("old backend's device kept after the drain")
	}
}

// BenchmarkDesired measures computing the whole desired state for 5000
// vxlan peers: the CPU part of every reconcile pass.
func BenchmarkDesired(b *testing.B) {
	d := newTestLoop(&testing.T{}, `{"Network":"10.0.0.0/8"}`)
	d.log = zap.NewNop()
	var peers []subnet.Lease
	for i := range 5000 {
		name := fmt.Sprintf("node-%d", i)
		peers = append(peers, lease(name, fmt.Sprintf("10.%d.%d.0/24", 1+i/256, i%256),
			fmt.Sprintf("198.18.%d.%d", i/250, 1+i%250), "vxlan", vxData(name)))
	}
	d.cfg.Underlay.Iface.Addrs = []netip.Prefix{netip.MustParsePrefix("198.18.0.11/15")}
	b.ReportAllocs()
	for b.Loop() {
		st, err := d.desired(peers)
		if err != nil {
			b.Fatal(err)
		}
		if err := st.Validate(); err != nil {
			b.Fatal(err)
		}
	}
}

// flanneld's udp nodes publish an empty backend type and null data: they
// are udp peers on the cluster's udp port (ours, when we run udp).
func TestDesiredReachesFlanneldUDPPeers(t *testing.T) {
	for _, tc := range []struct{ conf, port string }{
		{`{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":8300}}`, "8300"},
		{`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`, "8285"},
	} {
		d := newTestLoop(t, tc.conf)
		st, err := d.desired([]subnet.Lease{lease("f", "10.244.6.0/24", "198.18.0.16", "", `null`)})
		if err != nil {
			t.Fatal(err)
		}
		if r, ok := routeTo(st, "10.244.6.0/24"); !ok || r.Dev != "overlay0" {
			t.Errorf("%s: route to the flanneld udp peer %+v", tc.conf, r)
		}
		if len(d.peers.skipped) != 0 {
			t.Errorf("%s: skipped %v", tc.conf, d.peers.skipped)
		}
		if got := fmt.Sprint(st.Datapath("udp")); !strings.Contains(got, "198.18.0.16:"+tc.port) {
			t.Errorf("%s: udp datapath %s, want the peer on port %s", tc.conf, got, tc.port)
		}
	}
}
