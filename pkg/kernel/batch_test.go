package kernel

import (
	"net/netip"
	"strings"
	"testing"
)

// Entries are set in batches of many requests per write; each request is
// answered on its own. 600 peers (several batches) all land, and a route
// the kernel refuses fails alone, named, while the others of its batch are
// in place.
func TestBatchedApply(t *testing.T) {
	ns, name := underlayNS(t)
	r := newTestReconciler(t, ns)
	want := peersState(600)
	bad := Route{Dst: netip.MustParsePrefix("10.250.0.0/24"), Gw: netip.MustParseAddr("203.0.113.1"), Dev: "eth0"}
	want.Routes = append(want.Routes[:300], append([]Route{bad}, want.Routes[300:]...)...)
	ch, _, err := r.Apply(want)
	if err == nil || !strings.Contains(err.Error(), "setting route "+bad.String()) || strings.Count(err.Error(), "setting route") != 1 {
		t.Fatalf("want exactly the unreachable route's failure, got %v", err)
	}
	if ch.Created[EntryRoute] != 600 || ch.Created[EntryNeigh] != 600 || ch.Created[EntryFDB] != 600 {
		t.Fatalf("created %+v, want 600 of each", ch)
	}
	want.Routes = append(want.Routes[:300], want.Routes[301:]...)
	assertKernel(t, name, want)
}
