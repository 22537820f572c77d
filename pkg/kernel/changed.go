package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/overlayd/overlayd/pkg/nlbatch"
)

// ErrUntrusted is ApplyChanged's answer when the kernel may not hold what
// the last Apply wanted (it failed, or none ran yet): the caller runs Apply.
var ErrUntrusted = errors.New("kernel: no complete Apply to build on")

// ApplyChanged replaces the entries unset with the entries set — what a
// few peers needed before and need now — trusting the model of the last
// Apply (model.go) instead of reading every table back, so that it costs
// what changed, not what every peer has. An unset entry another wanted
// entry still stands for stays. Links are Apply's alone; so is noticing
// drift, through the events and the resync. It returns the counts of
// every entry now wanted.
func (r *Reconciler) ApplyChanged(unset, set State) (Changes, Counts, error) {
	ch := newChanges()
	if len(unset.Links) > 0 || len(set.Links) > 0 {
		return ch, nil, errors.New("kernel: ApplyChanged changes no links")
	}
	if err := set.Validate(); err != nil {
		return ch, nil, err
	}
	r.mu.Lock()
	trusted, links := r.model.trusted, r.model.links
	r.model.trusted = false // until this call has set all it wanted
	r.mu.Unlock()
	if !trusted {
		return ch, nil, ErrUntrusted
	}
	var errs []error
	fail := func(err error) { errs = append(errs, err) }
	others := map[string]int{} // devices not ours (the underlay, for host-gw), looked up once
	index := func(dev string) (int, error) {
		if idx, ok := links[dev]; ok {
			return idx, nil
		}
		if idx, ok := others[dev]; ok {
			return idx, nil
		}
		l, err := r.h.LinkByName(dev)
		if err != nil {
			return 0, fmt.Errorf("device %s: %w", dev, err)
		}
		others[dev] = l.Attrs().Index
		return l.Attrs().Index, nil
	}

	// The model first, under the lock, then the writes: their events are
	// its echo. Routes go before the next hops they used.
	var writes []nlbatch.Change
	var deletes []func()
	r.mu.Lock()
	m := &r.model
	fdbSets, fdbGone := changeTable(m.fdb, unset.FDB, set.FDB, func(f FDBEntry) (fdbKey, netip.Addr, error) {
		key, err := fdbKeyOf(f, index)
		return key, f.Dst, err
	}, func(f FDBEntry, was netip.Addr) error {
		return fmt.Errorf("FDB entry %s on %s wanted to both %s and %s", f.MAC, f.Dev, was, f.Dst)
	}, fail)
	neighSets, neighGone := changeTable(m.neighs, unset.Neighs, set.Neighs, func(n Neigh) (neighKey, mac48, error) {
		return neighKeyOf(n, index)
	}, func(n Neigh, was mac48) error {
		return fmt.Errorf("neighbour %s on %s wanted as both %s and %s", n.IP, n.Dev, net.HardwareAddr(was[:]), n.MAC)
	}, fail)
	routeSets, routeGone := changeTable(m.routes, unset.Routes, set.Routes, func(w Route) (routeKey, routeVal, error) {
		rt, err := routeAt(w, index)
		return keyOf(w.Dst, rt), valOf(rt), err
	}, func(w Route, _ routeVal) error {
		return fmt.Errorf("route %s wanted twice, through different next hops", w.Dst)
	}, fail)
	for _, c := range fdbSets {
		writes = append(writes, r.fdbSet(c.entry, c.key, c.existed, &ch, fail))
	}
	for _, c := range neighSets {
		writes = append(writes, r.neighSet(c.entry, c.key, c.val, c.existed, &ch, fail))
	}
	for _, c := range routeSets {
		rt, _ := routeAt(c.entry, index)
		writes = append(writes, r.routeSet(c.entry, rt, c.existed, &ch, fail))
	}
	for _, c := range routeGone {
		rt, _ := routeAt(c.entry, index)
		deletes = append(deletes, func() { r.deleteRoute(rt, &ch, fail) })
	}
	for _, c := range fdbGone {
		deletes = append(deletes, func() { r.deleteFDB(c.key, c.val, &ch, fail) })
	}
	for _, c := range neighGone {
		deletes = append(deletes, func() { r.deleteNeigh(c.key, &ch, fail) })
	}
	counts := Counts{EntryLink: len(links), EntryRoute: len(m.routes), EntryNeigh: len(m.neighs), EntryFDB: len(m.fdb)}
	r.mu.Unlock()

	r.batch.Make(writes)
	for _, del := range deletes {
		del()
	}
	r.mu.Lock()
	r.model.trusted = len(errs) == 0
	r.mu.Unlock()
	return ch, counts, errors.Join(errs...)
}

// tableEdit is one entry ApplyChanged writes (existed: the kernel has its
// key, with another value) or deletes (val: what the kernel has).
type tableEdit[E any, K, V comparable] struct {
	entry   E
	key     K
	val     V
	existed bool
}

// changeTable edits one table of the model: it drops one wanted entry for
// each of unset and adds set, and returns the entries to write and the
// keys nothing wants any more. Unset goes first, so that an entry in both
// (a peer's FDB entry to a new address) is one update. An entry another
// peer wants with another value is refused (clash), as Validate refuses it
// in a whole state; an unset entry whose device is gone is gone with it.
func changeTable[E any, K, V comparable](m map[K]counted[V], unset, set []E, at func(E) (K, V, error),
	clash func(E, V) error, fail func(error)) (writes, gone []tableEdit[E, K, V]) {
	was := map[K]tableEdit[E, K, V]{} // the model's value of each unset key, before
	for _, e := range unset {
		k, _, err := at(e)
		if err != nil {
			continue
		}
		if _, seen := was[k]; !seen {
			c, in := m[k]
			was[k] = tableEdit[E, K, V]{entry: e, key: k, val: c.v, existed: in}
		}
		dropWanted(m, k)
	}
	for _, e := range set {
		k, v, err := at(e)
		if err != nil {
			fail(err)
			continue
		}
		cur, in := m[k]
		if in && cur.v != v {
			fail(clash(e, cur.v))
			continue
		}
		if !in {
			cur.v, in = was[k].val, was[k].existed
		}
		addWanted(m, k, v)
		if !in || cur.v != v {
			writes = append(writes, tableEdit[E, K, V]{entry: e, key: k, val: v, existed: in})
		}
	}
	for k, w := range was {
		if _, kept := m[k]; !kept && w.existed {
			gone = append(gone, w)
		}
	}
	return writes, gone
}

// routeAt is w in netlink's form, through its device's ifindex.
func routeAt(w Route, index devIndex) (netlink.Route, error) {
	if w.Blackhole {
		return netlinkRoute(w, 0), nil
	}
	idx, err := index(w.Dev)
	if err != nil {
		return netlink.Route{}, fmt.Errorf("route %s: %w", w, err)
	}
	return netlinkRoute(w, idx), nil
}
