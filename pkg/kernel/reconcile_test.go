package kernel

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/overlayd/overlayd/test/netnstest"
)

// testNS creates a network namespace for one test, removed when it ends.
func testNS(t *testing.T) (netns.NsHandle, string) {
	name, h := netnstest.New(t, "ovlK-", "kernel")
	return h, name
}

// ipIn runs the ip command inside the namespace and returns its output.
func ipIn(t *testing.T, ns string, args ...string) string {
	t.Helper()
	return netnstest.IP(t, ns, args...)
}

// underlayNS returns a namespace with an underlay "eth0" 198.18.0.11/24.
func underlayNS(t *testing.T) (netns.NsHandle, string) {
	ns, name := testNS(t)
	ipIn(t, name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer")
	ipIn(t, name, "addr", "add", "198.18.0.11/24", "dev", "eth0")
	ipIn(t, name, "link", "set", "eth0", "up")
	ipIn(t, name, "link", "set", "eth0-peer", "up")
	return ns, name
}

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// vxlanState is a typical desired state: one vxlan device and two peers.
func vxlanState() State {
	return State{
		Links: []Link{{
			Name: "overlay.1", Kind: KindVXLAN, MTU: 1450, MAC: mac("0e:00:00:00:00:11"),
			VXLAN: VXLAN{VNI: 1, Port: 8472, Local: netip.MustParseAddr("198.18.0.11"), Underlay: "eth0"},
			Addrs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/32")},
		}},
		Routes: []Route{
			{Dst: netip.MustParsePrefix("10.244.2.0/24"), Gw: netip.MustParseAddr("10.244.2.0"), Dev: "overlay.1", OnLink: true},
			{Dst: netip.MustParsePrefix("10.244.3.0/24"), Gw: netip.MustParseAddr("10.244.3.0"), Dev: "overlay.1", OnLink: true},
		},
		Neighs: []Neigh{
			{Dev: "overlay.1", IP: netip.MustParseAddr("10.244.2.0"), MAC: mac("0e:00:00:00:00:12")},
			{Dev: "overlay.1", IP: netip.MustParseAddr("10.244.3.0"), MAC: mac("0e:00:00:00:00:13")},
		},
		FDB: []FDBEntry{
			{Dev: "overlay.1", MAC: mac("0e:00:00:00:00:12"), Dst: netip.MustParseAddr("198.18.0.12")},
			{Dev: "overlay.1", MAC: mac("0e:00:00:00:00:13"), Dst: netip.MustParseAddr("198.18.0.13")},
		},
	}
}

func newTestReconciler(t *testing.T, ns netns.NsHandle) *Reconciler {
	r, err := NewReconcilerAt(ns, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func mustApply(t *testing.T, r *Reconciler, want State) Changes {
	t.Helper()
	ch, _, err := r.Apply(want)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	return ch
}

// assertKernel checks the namespace holds exactly the entries of a vxlan state.
func assertKernel(t *testing.T, ns string, want State) {
	t.Helper()
	routes := ipIn(t, ns, "route", "show", "proto", "79")
	if got := strings.Count(routes, "\n"); got != len(want.Routes) {
		t.Errorf("%d overlayd routes, want %d:\n%s", got, len(want.Routes), routes)
	}
	for _, r := range want.Routes {
		if !strings.Contains(routes, fmt.Sprintf("%s via %s dev %s", r.Dst, r.Gw, r.Dev)) {
			t.Errorf("route %s missing:\n%s", r, routes)
		}
	}
	neighs := ipIn(t, ns, "neigh", "show", "nud", "permanent")
	if got := strings.Count(neighs, "\n"); got != len(want.Neighs) {
		t.Errorf("%d permanent neighbours, want %d:\n%s", got, len(want.Neighs), neighs)
	}
	for _, n := range want.Neighs {
		if !strings.Contains(neighs, fmt.Sprintf("%s dev %s lladdr %s", n.IP, n.Dev, n.MAC)) {
			t.Errorf("neighbour %s missing:\n%s", n, neighs)
		}
	}
	if len(want.Links) == 0 {
		return
	}
	fdb, err := exec.Command("bridge", "-n", ns, "fdb", "show", "dev", want.Links[0].Name).CombinedOutput()
	if err != nil {
		t.Fatalf("bridge fdb: %v %s", err, fdb)
	}
	for _, f := range want.FDB {
		if !strings.Contains(string(fdb), fmt.Sprintf("%s dst %s self permanent", f.MAC, f.Dst)) {
			t.Errorf("FDB entry %s missing:\n%s", f, fdb)
		}
	}
	if got := strings.Count(string(fdb), "permanent"); got != len(want.FDB) {
		t.Errorf("%d permanent FDB entries, want %d:\n%s", got, len(want.FDB), fdb)
	}
}

func TestApplyCreatesAndIsIdempotent(t *testing.T) {
	ns, name := underlayNS(t)
	r := newTestReconciler(t, ns)
	want := vxlanState()

	ch := mustApply(t, r, want)
	if ch.Created[EntryLink] != 1 || ch.Created[EntryRoute] != 2 || ch.Created[EntryNeigh] != 2 || ch.Created[EntryFDB] != 2 {
		t.Fatalf("first apply created %v", ch.Created)
	}
	assertKernel(t, name, want)
	link := ipIn(t, name, "-d", "link", "show", "overlay.1")
	for _, s := range []string{"vxlan id 1", "local 198.18.0.11", "dev eth0", "dstport 8472", "nolearning", "mtu 1450", "0e:00:00:00:00:11", "alias overlayd", "UP"} {
		if !strings.Contains(link, s) {
			t.Errorf("link lacks %q:\n%s", s, link)
		}
	}

	if ch := mustApply(t, r, want); ch.Total() != 0 {
		t.Fatalf("second apply changed %+v", ch)
	}
}

func TestApplyRepairsWhatWasDeletedByHand(t *testing.T) {
	ns, name := underlayNS(t)
	r := newTestReconciler(t, ns)
	want := vxlanState()
	mustApply(t, r, want)

	ipIn(t, name, "route", "del", "10.244.2.0/24")
	ipIn(t, name, "neigh", "del", "10.244.3.0", "dev", "overlay.1")
	if out, err := exec.Command("bridge", "-n", name, "fdb", "del", "0e:00:00:00:00:12", "dev", "overlay.1", "dst", "198.18.0.12", "self").CombinedOutput(); err != nil {
		t.Fatalf("bridge fdb del: %v %s", err, out)
	}
	ch := mustApply(t, r, want)
	if ch.Created[EntryRoute] != 1 || ch.Created[EntryNeigh] != 1 || ch.Created[EntryFDB] != 1 || ch.Total() != 3 {
		t.Fatalf("repair changed %+v, want exactly one route, neighbour and FDB entry", ch)
	}
	assertKernel(t, name, want)

	// The device itself deleted: recreated with all its entries.
	ipIn(t, name, "link", "del", "overlay.1")
	mustApply(t, r, want)
	assertKernel(t, name, want)

	// A route pointed elsewhere by hand (same protocol and metric) is put
	// back.
	metric := fmt.Sprint(spreadMetric(netip.MustParsePrefix("10.244.3.0/24")))
	ipIn(t, name, "route", "replace", "10.244.3.0/24", "dev", "eth0", "proto", "79", "metric", metric)
	ch = mustApply(t, r, want)
	if ch.Updated[EntryRoute] != 1 || ch.Total() != 1 {
		t.Fatalf("changed route not updated: %+v", ch)
	}
	assertKernel(t, name, want)

	// One of our protocol beside it with another metric (as an earlier
	// release's) is removed, ours left as it is.
	ipIn(t, name, "route", "add", "10.244.3.0/24", "dev", "eth0", "proto", "79")
	ch = mustApply(t, r, want)
	if ch.Deleted[EntryRoute] != 1 || ch.Total() != 1 {
		t.Fatalf("a second route of ours to a destination: %+v, want it deleted", ch)
	}
	assertKernel(t, name, want)
}

// IPv4 routes through a gateway get a metric from their subnet, spread
// over spreadMetrics values (the kernel's next-hop lookup would otherwise
// walk one chain per insert); consecutive subnets get consecutive metrics.
// Routes without a gateway, IPv6 routes and routes with a metric of their
// own keep theirs.
func TestSpreadMetric(t *testing.T) {
	for _, tc := range []struct {
		dst  string
		want int
	}{
		{"10.244.0.0/24", 0},
		{"10.244.1.0/24", 1},
		{"10.244.2.0/24", 2},
		{"10.244.255.0/24", 255},
		{"10.245.0.0/24", 256},
		{"10.247.255.0/24", 1023},
		{"10.248.0.0/24", 0},
		{"10.244.0.64/26", 1},
		{"0.0.0.0/0", 0},
	} {
		if got := spreadMetric(netip.MustParsePrefix(tc.dst)); got != tc.want {
			t.Errorf("spreadMetric(%s) = %d, want %d", tc.dst, got, tc.want)
		}
	}
	gw := netlinkRoute(Route{Dst: netip.MustParsePrefix("10.244.7.0/24"), Gw: netip.MustParseAddr("10.244.7.0"), Dev: "overlay.1", OnLink: true}, 5)
	direct := netlinkRoute(Route{Dst: netip.MustParsePrefix("10.244.7.0/24"), Dev: "overlay0"}, 5)
	own := netlinkRoute(Route{Dst: netip.MustParsePrefix("10.244.7.0/24"), Gw: netip.MustParseAddr("198.18.0.7"), Dev: "eth0", Metric: 42}, 5)
	v6 := netlinkRoute(Route{Dst: netip.MustParsePrefix("fd00:10:7::/64"), Gw: netip.MustParseAddr("fd00:10:7::"), Dev: "overlay6.1", OnLink: true}, 5)
	if gw.Priority != 7 || direct.Priority != 0 || own.Priority != 42 || v6.Priority != 0 {
		t.Errorf("priorities: through a gateway %d (want 7), direct %d (want 0), own %d (want 42), IPv6 %d (want 0)",
			gw.Priority, direct.Priority, own.Priority, v6.Priority)
	}
}

func TestApplyRemovesOnlyOurStaleEntries(t *testing.T) {
	ns, name := underlayNS(t)
	r := newTestReconciler(t, ns)
	mustApply(t, r, vxlanState())

	// Entries that are not ours: a static route, a route of another
	// protocol into the pod network, a neighbour on the underlay.
	ipIn(t, name, "route", "add", "10.99.0.0/16", "via", "198.18.0.1")
	ipIn(t, name, "route", "add", "10.244.9.0/24", "via", "198.18.0.9", "proto", "static")
	ipIn(t, name, "neigh", "add", "198.18.0.9", "lladdr", "02:00:00:00:00:09", "dev", "eth0", "nud", "permanent")

	// Peer 10.244.3.0/24 leaves.
	want := vxlanState()
	want.Routes = want.Routes[:1]
	want.Neighs = want.Neighs[:1]
	want.FDB = want.FDB[:1]
	ch := mustApply(t, r, want)
	if ch.Deleted[EntryRoute] != 1 || ch.Deleted[EntryNeigh] != 1 || ch.Deleted[EntryFDB] != 1 {
		t.Fatalf("stale peer removal changed %+v", ch)
	}
	routes := ipIn(t, name, "route")
	for _, s := range []string{"10.99.0.0/16 via 198.18.0.1", "10.244.9.0/24 via 198.18.0.9 dev eth0 proto static", "10.244.2.0/24 via 10.244.2.0 dev overlay.1 proto 79 metric 2 onlink"} {
		if !strings.Contains(routes, s) {
			t.Errorf("route %q missing:\n%s", s, routes)
		}
	}
	if strings.Contains(routes, "10.244.3.0/24") {
		t.Errorf("stale route left:\n%s", routes)
	}
	if neigh := ipIn(t, name, "neigh", "show", "dev", "eth0"); !strings.Contains(neigh, "198.18.0.9 lladdr 02:00:00:00:00:09") {
		t.Errorf("foreign neighbour removed:\n%s", neigh)
	}

	// Nothing wanted at all: our device and routes go, the rest stays.
	mustApply(t, r, State{})
	if links := ipIn(t, name, "link"); strings.Contains(links, "overlay.1") {
		t.Errorf("device left:\n%s", links)
	}
	if routes := ipIn(t, name, "route", "show", "proto", "79"); routes != "" {
		t.Errorf("overlayd routes left:\n%s", routes)
	}
	if routes := ipIn(t, name, "route"); !strings.Contains(routes, "10.244.9.0/24") || !strings.Contains(routes, "10.99.0.0/16") {
		t.Errorf("foreign routes removed:\n%s", routes)
	}
}

// A fresh reconciler (an agent restarted) adopts what is right without
// touching it and removes what is stale, even though it never saw it created.
func TestRestartAdoptsAndCleansUp(t *testing.T) {
	ns, name := underlayNS(t)
	first := newTestReconciler(t, ns)
	mustApply(t, first, vxlanState())
	ifindexBefore := ipIn(t, name, "-o", "link", "show", "overlay.1")[:3]

	second := newTestReconciler(t, ns)
	want := vxlanState()
	want.Routes, want.Neighs, want.FDB = want.Routes[:1], want.Neighs[:1], want.FDB[:1]
	ch := mustApply(t, second, want)
	if ch.Created[EntryLink] != 0 || ch.Updated[EntryLink] != 0 || ch.Created[EntryRoute] != 0 || ch.Updated[EntryRoute] != 0 {
		t.Fatalf("restart recreated entries that were right: %+v", ch)
	}
	if ch.Deleted[EntryRoute] != 1 {
		t.Fatalf("restart did not remove the stale route: %+v", ch)
	}
	if after := ipIn(t, name, "-o", "link", "show", "overlay.1")[:3]; after != ifindexBefore {
		t.Fatalf("device recreated: ifindex %s -> %s", ifindexBefore, after)
	}
	assertKernel(t, name, want)
}

func TestApplyReplacesDeviceWithWrongSettings(t *testing.T) {
	ns, name := underlayNS(t)
	r := newTestReconciler(t, ns)
	mustApply(t, r, vxlanState())

	want := vxlanState()
	want.Links[0].VXLAN.Port = 4789
	ch := mustApply(t, r, want)
	if ch.Updated[EntryLink] == 0 {
		t.Fatalf("device with wrong port not replaced: %+v", ch)
	}
	if link := ipIn(t, name, "-d", "link", "show", "overlay.1"); !strings.Contains(link, "dstport 4789") {
		t.Fatalf("device not replaced:\n%s", link)
	}
	assertKernel(t, name, want)

	// MTU is changed in place.
	want.Links[0].MTU = 1400
	mustApply(t, r, want)
	if link := ipIn(t, name, "link", "show", "overlay.1"); !strings.Contains(link, "mtu 1400") {
		t.Fatalf("MTU not updated:\n%s", link)
	}
}

func TestApplyNeverTouchesForeignLink(t *testing.T) {
	ns, name := underlayNS(t)
	ipIn(t, name, "link", "add", "overlay.1", "type", "bridge")
	r := newTestReconciler(t, ns)
	_, _, err := r.Apply(vxlanState())
	if err == nil || !strings.Contains(err.Error(), "link overlay.1 exists and is not overlayd's") {
		t.Fatalf("err = %v, want a refusal naming the foreign link", err)
	}
	if link := ipIn(t, name, "-d", "link", "show", "overlay.1"); !strings.Contains(link, "bridge") {
		t.Fatalf("foreign link changed:\n%s", link)
	}
}

func TestApplyTUN(t *testing.T) {
	ns, name := underlayNS(t)
	r := newTestReconciler(t, ns)
	want := State{
		Links:  []Link{{Name: "overlay0", Kind: KindTUN, MTU: 1472, Addrs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/32")}}},
		Routes: []Route{{Dst: netip.MustParsePrefix("10.244.2.0/24"), Dev: "overlay0"}},
	}
	mustApply(t, r, want)
	link := ipIn(t, name, "-d", "link", "show", "overlay0")
	for _, s := range []string{"tun", "mtu 1472", "alias overlayd"} {
		if !strings.Contains(link, s) {
			t.Errorf("TUN lacks %q:\n%s", s, link)
		}
	}
	if ch := mustApply(t, r, want); ch.Total() != 0 {
		t.Fatalf("second apply changed %+v", ch)
	}
	if routes := ipIn(t, name, "route", "show", "proto", "79"); !strings.Contains(routes, "10.244.2.0/24 dev overlay0") {
		t.Fatalf("TUN route missing:\n%s", routes)
	}
}

func TestValidateRefusesContradictions(t *testing.T) {
	st := vxlanState()
	st.Routes = append(st.Routes, Route{Dst: netip.MustParsePrefix("10.244.2.0/24"), Dev: "eth0"})
	if err := st.Validate(); err == nil {
		t.Error("one destination routed two ways accepted")
	}
	st = vxlanState()
	st.Neighs = append(st.Neighs, Neigh{Dev: "overlay.1", IP: netip.MustParseAddr("10.244.2.0"), MAC: mac("0e:00:00:00:00:99")})
	if err := st.Validate(); err == nil {
		t.Error("one neighbour with two MACs accepted")
	}
	st = vxlanState()
	if err := st.AddLink(Link{Name: "overlay.1", Kind: KindVXLAN, MTU: 9000}); err == nil {
		t.Error("one link with two settings accepted")
	}
	if err := st.AddLink(vxlanState().Links[0]); err != nil {
		t.Errorf("the same link twice refused: %v", err)
	}
}

// Nothing is added through a foreign device that holds the name of one of
// ours: not even our own routes.
func TestNoEntriesThroughForeignLink(t *testing.T) {
	ns, name := underlayNS(t)
	ipIn(t, name, "link", "add", "overlay.1", "type", "bridge")
	ipIn(t, name, "link", "set", "overlay.1", "up")
	r := newTestReconciler(t, ns)
	if _, _, err := r.Apply(vxlanState()); err == nil {
		t.Fatal("apply succeeded with a foreign device in the way")
	}
	if routes := ipIn(t, name, "route", "show", "proto", "79"); routes != "" {
		t.Fatalf("routes added through the foreign device:\n%s", routes)
	}
	if neigh := ipIn(t, name, "neigh", "show", "dev", "overlay.1"); neigh != "" {
		t.Fatalf("neighbours added on the foreign device:\n%s", neigh)
	}
}

// peersState is vxlanState with peers peers' routes, neighbours and FDB
// entries.
func peersState(peers int) State {
	want := vxlanState()
	want.Routes, want.Neighs, want.FDB = nil, nil, nil
	for i := range peers {
		vtep := netip.AddrFrom4([4]byte{10, byte(1 + i/256), byte(i % 256), 0})
		m := net.HardwareAddr{0x0e, 0, 0, 0, byte(i >> 8), byte(i)}
		want.Routes = append(want.Routes, Route{Dst: netip.PrefixFrom(vtep, 24), Gw: vtep, Dev: "overlay.1", OnLink: true})
		want.Neighs = append(want.Neighs, Neigh{Dev: "overlay.1", IP: vtep, MAC: m})
		want.FDB = append(want.FDB, FDBEntry{Dev: "overlay.1", MAC: m, Dst: netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(1 + i%250)})})
	}
	return want
}

// BenchmarkApplyCold measures the first pass on a clean namespace: the
// device and 5000 peers' routes, neighbours and FDB entries created.
func BenchmarkApplyCold(b *testing.B) {
	want := peersState(5000)
	b.ReportAllocs()
	for b.Loop() {
		func() {
			b.StopTimer()
			// Removed on failure too (b.Fatalf runs the defers).
			ns, name := underlayNS(&testing.T{})
			defer netns.DeleteNamed(name)
			defer ns.Close()
			r, err := NewReconcilerAt(ns, zap.NewNop())
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			b.StartTimer()
			ch, _, err := r.Apply(want)
			b.StopTimer()
			if err != nil || ch.Created[EntryRoute] != 5000 {
				b.Fatalf("changes %+v, err %v", ch, err)
			}
			b.StartTimer()
		}()
	}
}

// BenchmarkApplyUnchanged measures a reconcile pass that finds nothing to
// change, with 5000 peers' routes, neighbours and FDB entries in place.
func BenchmarkApplyUnchanged(b *testing.B) {
	t := &testing.T{}
	ns, name := underlayNS(t)
	defer netns.DeleteNamed(name)
	r, err := NewReconcilerAt(ns, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	want := peersState(5000)
	if _, _, err := r.Apply(want); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		ch, _, err := r.Apply(want)
		if err != nil || ch.Total() != 0 {
			b.Fatalf("changes %+v, err %v", ch, err)
		}
	}
}

// A blackhole route for the node's own pod subnet (--ip-blackhole-route)
// lives beside the pod bridge's connected route of the same prefix (a
// metric of its own, so it never shadows it), is repaired like any route of
// ours, and removed when no longer wanted.
func TestApplyBlackholeRoute(t *testing.T) {
	ns, name := underlayNS(t)
	r := newTestReconciler(t, ns)
	ipIn(t, name, "link", "add", "cni0", "type", "bridge")
	ipIn(t, name, "addr", "add", "10.244.1.1/24", "dev", "cni0")
	ipIn(t, name, "link", "set", "cni0", "up")
	want := State{Routes: []Route{{Dst: netip.MustParsePrefix("10.244.1.0/24"), Blackhole: true, Metric: 4242}}}

	ch := mustApply(t, r, want)
	if ch.Created[EntryRoute] != 1 {
		t.Fatalf("first apply: %+v", ch)
	}
	routes := ipIn(t, name, "route", "show", "10.244.1.0/24")
	if !strings.Contains(routes, "blackhole 10.244.1.0/24 proto 79 metric 4242") || !strings.Contains(routes, "dev cni0 proto kernel") {
		t.Fatalf("want the bridge's route and our blackhole:\n%s", routes)
	}
	if got := ipIn(t, name, "route", "get", "10.244.1.7"); !strings.Contains(got, "dev cni0") {
		t.Fatalf("the blackhole shadows the bridge: %s", got)
	}
	if ch := mustApply(t, r, want); ch.Total() != 0 {
		t.Fatalf("second apply changed %+v", ch)
	}

	ipIn(t, name, "route", "del", "blackhole", "10.244.1.0/24", "metric", "4242")
	if ch := mustApply(t, r, want); ch.Created[EntryRoute] != 1 {
		t.Fatalf("deleted blackhole not repaired: %+v", ch)
	}
	ipIn(t, name, "link", "del", "cni0")
	// The kernel answers a lookup that ends in a blackhole with EINVAL.
	if out, err := exec.Command("ip", "-n", name, "route", "get", "10.244.1.7").CombinedOutput(); err == nil || !strings.Contains(string(out), "Invalid argument") {
		t.Fatalf("without the bridge, pod subnet traffic is not blackholed: %v %s", err, out)
	}

	if ch := mustApply(t, r, State{}); ch.Deleted[EntryRoute] != 1 {
		t.Fatalf("unwanted blackhole not removed: %+v", ch)
	}
	if got := ipIn(t, name, "route", "show", "proto", "79"); strings.TrimSpace(got) != "" {
		t.Fatalf("routes of ours left: %s", got)
	}
}

// An IPv6 tunnel: a vxlan device on the IPv6 underlay with its /128 (usable
// at once: no duplicate address detection), router advertisements off, and
// IPv6 route, neighbour and FDB entries; each repaired when deleted.
func TestApplyIPv6(t *testing.T) {
	ns, name := underlayNS(t)
	ipIn(t, name, "addr", "add", "fd00:198:18::11/64", "dev", "eth0", "nodad")
	r := newTestReconciler(t, ns)
	peerMAC := mac("0e:00:00:00:06:12")
	want := State{
		Links: []Link{{
			Name: "overlay-v6.1", Kind: KindVXLAN, MTU: 1430, MAC: mac("0e:00:00:00:06:11"),
			VXLAN:                  VXLAN{VNI: 1, Port: 8472, Local: netip.MustParseAddr("fd00:198:18::11"), Underlay: "eth0"},
			Addrs:                  []netip.Prefix{netip.MustParsePrefix("fd00:10:244:1::/128")},
			NoRouterAdvertisements: true,
		}},
		Routes: []Route{{Dst: netip.MustParsePrefix("fd00:10:244:2::/64"), Gw: netip.MustParseAddr("fd00:10:244:2::"), Dev: "overlay-v6.1", OnLink: true}},
		Neighs: []Neigh{{Dev: "overlay-v6.1", IP: netip.MustParseAddr("fd00:10:244:2::"), MAC: peerMAC}},
		FDB:    []FDBEntry{{Dev: "overlay-v6.1", MAC: peerMAC, Dst: netip.MustParseAddr("fd00:198:18::12")}},
	}
	mustApply(t, r, want)
	if ch := mustApply(t, r, want); ch.Total() != 0 {
		t.Fatalf("second apply changed %+v", ch)
	}
	check := func(what string) {
		t.Helper()
		if got := ipIn(t, name, "-6", "route", "show", "proto", "79"); !strings.Contains(got, "fd00:10:244:2::/64 via fd00:10:244:2:: dev overlay-v6.1") {
			t.Errorf("%s: route missing:\n%s", what, got)
		}
		if got := ipIn(t, name, "-6", "neigh", "show", "dev", "overlay-v6.1"); !strings.Contains(got, "fd00:10:244:2:: lladdr 0e:00:00:00:06:12 PERMANENT") {
			t.Errorf("%s: neighbour missing:\n%s", what, got)
		}
		if got, _ := execBridge(name, "fdb", "show", "dev", "overlay-v6.1"); !strings.Contains(string(got), "0e:00:00:00:06:12 dst fd00:198:18::12 self permanent") {
			t.Errorf("%s: FDB entry missing:\n%s", what, got)
		}
		if got := ipIn(t, name, "-6", "-o", "addr", "show", "dev", "overlay-v6.1", "to", "fd00:10:244:1::/128"); !strings.Contains(got, "fd00:10:244:1::/128") || strings.Contains(got, "tentative") {
			t.Errorf("%s: address missing or tentative:\n%s", what, got)
		}
		if out, err := exec.Command("ip", "netns", "exec", name, "cat", "/proc/sys/net/ipv6/conf/overlay-v6.1/accept_ra").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "0" {
			t.Errorf("%s: accept_ra %q %v, want 0", what, out, err)
		}
	}
	check("first apply")

	ipIn(t, name, "-6", "route", "del", "fd00:10:244:2::/64")
	ipIn(t, name, "-6", "neigh", "del", "fd00:10:244:2::", "dev", "overlay-v6.1")
	execBridge(name, "fdb", "del", "0e:00:00:00:06:12", "dev", "overlay-v6.1", "dst", "fd00:198:18::12", "self")
	if out, err := exec.Command("ip", "netns", "exec", name, "sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/overlay-v6.1/accept_ra").CombinedOutput(); err != nil {
		t.Fatalf("setting accept_ra: %v %s", err, out)
	}
	ch := mustApply(t, r, want)
	if ch.Created[EntryRoute] != 1 || ch.Created[EntryNeigh] != 1 || ch.Created[EntryFDB] != 1 || ch.Updated[EntryLink] != 1 {
		t.Errorf("repair changed %+v, want a route, a neighbour, an FDB entry and the device's accept_ra", ch)
	}
	check("repair")

	ipIn(t, name, "link", "del", "overlay-v6.1")
	mustApply(t, r, want)
	check("device deleted")

	// A live switch from host-gw: the route to the peer's subnet goes
	// through the underlay until the vxlan one replaces it, in place.
	ipIn(t, name, "-6", "route", "replace", "fd00:10:244:2::/64", "via", "fd00:198:18::12", "dev", "eth0", "proto", "79")
	if ch := mustApply(t, r, want); ch.Updated[EntryRoute] != 1 {
		t.Errorf("replacing the host-gw route changed %+v, want one route updated", ch)
	}
	check("replaced a route through the underlay")
	if got := ipIn(t, name, "-6", "route", "show", "fd00:10:244:2::/128"); strings.TrimSpace(got) != "" {
		t.Errorf("the temporary route to the gateway is left:\n%s", got)
	}
}
