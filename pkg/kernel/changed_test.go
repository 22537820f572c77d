package kernel

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// ApplyChanged replaces a few peers' entries on what the last Apply set:
// one peer moved (its FDB entry follows), one gone, one new, and an entry
// two peers want stays when one of them lets go.
func TestApplyChanged(t *testing.T) {
	ns, name := underlayNS(t)
	r := newTestReconciler(t, ns)
	if _, _, err := r.ApplyChanged(State{}, State{}); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("ApplyChanged before any Apply: %v, want ErrUntrusted", err)
	}
	want := peersState(4)
	// Peer 3 wants peer 2's neighbour too (as a second VTEP would).
	want.Neighs = append(want.Neighs, want.Neighs[2])
	mustApply(t, r, want)

	peer := func(st State, i int) State {
		return State{Routes: []Route{st.Routes[i]}, Neighs: []Neigh{st.Neighs[i]}, FDB: []FDBEntry{st.FDB[i]}}
	}
	moved := peer(want, 0)
	moved.FDB = []FDBEntry{{Dev: "overlay.1", MAC: want.FDB[0].MAC, Dst: netip.MustParseAddr("198.18.1.99")}}
	added := peer(peersState(5), 4)
	unset, set := peer(want, 0), moved
	gone := peer(want, 2) // its neighbour is still wanted by "peer 3"
	unset.Routes, unset.Neighs, unset.FDB = append(unset.Routes, gone.Routes...), append(unset.Neighs, gone.Neighs...), append(unset.FDB, gone.FDB...)
	set.Routes, set.Neighs, set.FDB = append(set.Routes, added.Routes...), append(set.Neighs, added.Neighs...), append(set.FDB, added.FDB...)
	ch, counts, err := r.ApplyChanged(unset, set)
	if err != nil {
		t.Fatal(err)
	}
	if ch.Updated[EntryFDB] != 1 || ch.Created[EntryRoute] != 1 || ch.Deleted[EntryRoute] != 1 || ch.Deleted[EntryFDB] != 1 || ch.Deleted[EntryNeigh] != 0 {
		t.Errorf("changes %+v", ch)
	}
	if counts[EntryRoute] != 4 || counts[EntryNeigh] != 5 || counts[EntryFDB] != 4 {
		t.Errorf("counts %v, want 4 routes and FDB entries, 5 neighbours", counts)
	}
	after := State{Links: want.Links}
	for _, i := range []int{0, 1, 3} {
		p := peer(want, i)
		after.Routes, after.Neighs, after.FDB = append(after.Routes, p.Routes...), append(after.Neighs, p.Neighs...), append(after.FDB, p.FDB...)
	}
	after.FDB[0] = moved.FDB[0]
	after.Neighs = append(after.Neighs, want.Neighs[2])
	after.Routes, after.Neighs, after.FDB = append(after.Routes, added.Routes...), append(after.Neighs, added.Neighs...), append(after.FDB, added.FDB...)
	assertKernel(t, name, after)
	// A full Apply of the same state finds nothing to change.
	if ch := mustApply(t, r, after); ch.Total() != 0 {
		t.Errorf("Apply after ApplyChanged changed %+v", ch)
	}

	// An entry another peer wants otherwise is refused (Validate would
	// refuse the whole state), and the kernel keeps the first.
	clash := State{FDB: []FDBEntry{{Dev: "overlay.1", MAC: want.FDB[1].MAC, Dst: netip.MustParseAddr("198.18.1.77")}}}
	if _, _, err := r.ApplyChanged(State{}, clash); err == nil || !strings.Contains(err.Error(), "wanted to both") {
		t.Errorf("a clashing FDB entry: %v, want it refused", err)
	}
	if fdb, _ := execBridge(name, "fdb", "show", "dev", "overlay.1"); !strings.Contains(string(fdb), want.FDB[1].Dst.String()) {
		t.Errorf("the clash changed the FDB:\n%s", fdb)
	}
	mustApply(t, r, after)

	// A failed Apply leaves nothing to build on.
	broken := after
	broken.Routes = append(slices.Clone(after.Routes), Route{Dst: netip.MustParsePrefix("10.99.0.0/24"), Dev: "nonexistent"})
	if _, _, err := r.Apply(broken); err == nil {
		t.Fatal("Apply through a missing device succeeded")
	}
	if _, _, err := r.ApplyChanged(State{}, added); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("ApplyChanged after a failed Apply: %v, want ErrUntrusted", err)
	}
}

// The watch stays quiet about the echo of the reconciler's own writes, by
// Apply and ApplyChanged (additions, updates and removals), and reports
// what someone else changes.
func TestWatchIgnoresOwnWrites(t *testing.T) {
	ns, name := underlayNS(t)
	r, err := NewReconcilerAt(ns, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	want := peersState(300)
	mustApply(t, r, want)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	notified := make(chan string, 10000)
	go r.Watch(ctx, func(int) bool { return false }, func(reason string) { notified <- reason })

	// A route of ours deleted by hand, and put back by Apply, until the
	// deletion is reported: the subscription is live.
	for live := false; !live; {
		ipIn(t, name, "route", "del", want.Routes[7].Dst.String())
		select {
		case <-notified:
			live = true
		case <-time.After(500 * time.Millisecond):
		}
		mustApply(t, r, want)
	}
	next := func(what string) string {
		t.Helper()
		select {
		case reason := <-notified:
			return reason
		case <-time.After(10 * time.Second):
			t.Fatalf("no notification for %s", what)
			return ""
		}
	}

	// waitFor takes notifications until reason: the watch has taken every
	// event before the one reason names of the same subscription (routes,
	// or neighbours with FDB entries), as each is read in order.
	waitFor := func(reason string) {
		t.Helper()
		for next("settling: "+reason) != reason {
		}
	}

	// More peers, then a few changed. The echoes of the first writes are
	// taken before the model changes again: an echo that arrives after it
	// no longer matches the model, and is reported (one spurious pass).
	want = peersState(600)
	mustApply(t, r, want)
	ipIn(t, name, "route", "del", want.Routes[9].Dst.String())
	waitFor(fmt.Sprintf("route to %s changed", want.Routes[9].Dst))
	// (An FDB entry: a deleted neighbour is reported more than once.)
	if out, err := execBridge(name, "fdb", "del", want.FDB[9].MAC.String(), "dev", "overlay.1", "dst", want.FDB[9].Dst.String(), "self"); err != nil {
		t.Fatalf("bridge fdb del: %v %s", err, out)
	}
	waitFor(fmt.Sprintf("FDB entry %s dst %s changed", want.FDB[9].MAC, want.FDB[9].Dst))
	mustApply(t, r, want)
	moved := State{FDB: []FDBEntry{{Dev: "overlay.1", MAC: want.FDB[0].MAC, Dst: netip.MustParseAddr("198.18.1.99")}},
		Routes: []Route{{Dst: netip.MustParsePrefix("10.9.0.0/24"), Gw: netip.MustParseAddr("10.9.0.0"), Dev: "overlay.1", OnLink: true}}}
	if _, _, err := r.ApplyChanged(State{FDB: want.FDB[:1], Routes: want.Routes[599:]}, moved); err != nil {
		t.Fatal(err)
	}
	// Someone else deletes a route, an FDB entry, a neighbour: each is
	// reported, and nothing before them (the echoes of the writes came
	// first).
	ipIn(t, name, "route", "del", want.Routes[5].Dst.String())
	var got []string
	got = append(got, next("the deleted route"))
	out, err := execBridge(name, "fdb", "del", want.FDB[5].MAC.String(), "dev", "overlay.1", "dst", want.FDB[5].Dst.String(), "self")
	if err != nil {
		t.Fatalf("bridge fdb del: %v %s", err, out)
	}
	got = append(got, next("the deleted FDB entry"))
	// A deleted neighbour is reported as failed, not permanent: still
	// ours, as it is wanted.
	ipIn(t, name, "neigh", "del", want.Neighs[5].IP.String(), "dev", "overlay.1")
	got = append(got, next("the deleted neighbour"))
	wantGot := []string{
		fmt.Sprintf("route to %s changed", want.Routes[5].Dst),
		fmt.Sprintf("FDB entry %s dst %s changed", want.FDB[5].MAC, want.FDB[5].Dst),
		fmt.Sprintf("neighbour %s changed", want.Neighs[5].IP),
	}
	if !slices.Equal(got, wantGot) {
		t.Errorf("notifications %q, want only the three deletions %q", got, wantGot)
	}
}
