package reconcile

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/subnet"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// A changed-peers pass changes the senders by what the changed peers had
// and have: an address another peer still sends from stays, one that moves
// from one peer to another is no change.
func TestSenderRefsChange(t *testing.T) {
	peers := []subnet.Lease{
		{Node: "a", Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("198.18.0.1")}},
		{Node: "b", Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("198.18.0.2"), SourceIP: netip.MustParseAddr("198.18.0.1")}},
		{Node: "c", Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("198.18.0.3"), PublicIPv6: netip.MustParseAddr("fd00::3")}},
	}
	refs := newSenderRefs(peers)
	sorted := senders(peers)
	// a leaves (198.18.0.1 stays: b sends from it); c moves to .4, and d
	// arrives on c's old .3.
	added, removed := refs.change(
		[][]netip.Addr{addrs("198.18.0.1"), addrs("198.18.0.3", "fd00::3")},
		[][]netip.Addr{addrs("198.18.0.4", "fd00::3"), addrs("198.18.0.3")})
	if !slices.Equal(added, addrs("198.18.0.4")) || len(removed) != 0 {
		t.Errorf("added %v, removed %v; want 198.18.0.4 added, nothing removed", added, removed)
	}
	got := editSorted(sorted, added, removed)
	after := []subnet.Lease{peers[1],
		{Node: "c", Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("198.18.0.4"), PublicIPv6: netip.MustParseAddr("fd00::3")}},
		{Node: "d", Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("198.18.0.3")}}}
	if want := senders(after); !slices.Equal(got, want) {
		t.Errorf("senders %v, want %v (a full pass's)", got, want)
	}
	// b leaves too: now 198.18.0.1 goes.
	if added, removed := refs.change([][]netip.Addr{addrs("198.18.0.2", "198.18.0.1")}, nil); len(added) != 0 ||
		!slices.Equal(removed, addrs("198.18.0.1", "198.18.0.2")) {
		t.Errorf("b leaving: added %v, removed %v", added, removed)
	}
}

// The desired state a changed-peers pass edits holds what a full pass
// would build, in another order, and compares as the same.
func TestReplaceEntries(t *testing.T) {
	r := func(dst string) kernel.Route {
		p := netip.MustParsePrefix(dst)
		return kernel.Route{Dst: p, Gw: p.Addr(), Dev: "overlay.1", OnLink: true}
	}
	n := func(ip string, mac byte) kernel.Neigh {
		return kernel.Neigh{Dev: "overlay.1", IP: netip.MustParseAddr(ip), MAC: []byte{0x0e, 0, 0, 0, 0, mac}}
	}
	var full, edited backend.State
	full.Routes = []kernel.Route{r("10.0.1.0/24"), r("10.0.2.0/24"), r("10.0.3.0/24")}
	full.Neighs = []kernel.Neigh{n("10.0.1.0", 1), n("10.0.2.0", 5), n("10.0.3.0", 3)}
	edited.Routes = []kernel.Route{r("10.0.1.0/24"), r("10.0.3.0/24"), r("10.0.4.0/24")}
	edited.Neighs = []kernel.Neigh{n("10.0.1.0", 1), n("10.0.3.0", 3), n("10.0.4.0", 4)}
	// Peer 4 gone, peer 2 new with a neighbour MAC of 5.
	edited.Routes = replaceEntries(edited.Routes, []kernel.Route{r("10.0.4.0/24")}, []kernel.Route{r("10.0.2.0/24")}, routeEntry)
	edited.Neighs = replaceEntries(edited.Neighs, []kernel.Neigh{n("10.0.4.0", 4)}, []kernel.Neigh{n("10.0.2.0", 5)}, neighEntryOf)
	if !sameDesired(full, edited, true) {
		t.Errorf("edited %+v, want the same entries as %+v", edited, full)
	}
	if sameDesired(full, edited, false) {
		t.Error("in another order, yet the same in order")
	}
	edited.Neighs[2] = n("10.0.2.0", 6)
	if sameDesired(full, edited, true) {
		t.Error("a neighbour with another MAC compares as the same")
	}
}
