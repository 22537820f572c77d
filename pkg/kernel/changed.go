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
	// its echo. Unset before set, so that an entry in both (a peer's FDB
	// entry to a new address) is one update. An entry another peer wants
	// with another value is refused, as Validate refuses it in a whole
	// state.
	var writes []nlbatch.Change
	var deletes []func()
	r.mu.Lock()
	m := &r.model
	fdbWas := map[fdbKey]counted[netip.Addr]{}
	for _, f := range unset.FDB {
		if key, err := fdbKeyOf(f, index); err == nil {
			if _, seen := fdbWas[key]; !seen {
				fdbWas[key] = m.fdb[key]
			}
			dropWanted(m.fdb, key)
		}
	}
	for _, f := range set.FDB {
		key, err := fdbKeyOf(f, index)
		if err != nil {
			fail(err)
			continue
		}
		was, in := m.fdb[key]
		if in && was.v != f.Dst {
			fail(fmt.Errorf("FDB entry %s on %s wanted to both %s and %s", f.MAC, f.Dev, was.v, f.Dst))
			continue
		}
		if !in {
			was, in = fdbWas[key], fdbWas[key].refs > 0
		}
		addWanted(m.fdb, key, f.Dst)
		if !in || was.v != f.Dst {
			writes = append(writes, r.fdbSet(f, key, in, &ch, fail))
		}
	}
	for key, was := range fdbWas {
		if _, kept := m.fdb[key]; !kept && was.refs > 0 {
			deletes = append(deletes, func() { r.deleteFDB(key, was.v, &ch, fail) })
		}
	}

	neighWas := map[neighKey]counted[mac48]{}
	for _, n := range unset.Neighs {
		if key, _, err := neighKeyOf(n, index); err == nil {
			if _, seen := neighWas[key]; !seen {
				neighWas[key] = m.neighs[key]
			}
			dropWanted(m.neighs, key)
		}
	}
	for _, n := range set.Neighs {
		key, mac, err := neighKeyOf(n, index)
		if err != nil {
			fail(err)
			continue
		}
		was, in := m.neighs[key]
		if in && was.v != mac {
			fail(fmt.Errorf("neighbour %s on %s wanted as both %s and %s", n.IP, n.Dev, net.HardwareAddr(was.v[:]), n.MAC))
			continue
		}
		if !in {
			was, in = neighWas[key], neighWas[key].refs > 0
		}
		addWanted(m.neighs, key, mac)
		if !in || was.v != mac {
			writes = append(writes, r.neighSet(n, key, mac, in, &ch, fail))
		}
	}
	for key, was := range neighWas {
		if _, kept := m.neighs[key]; !kept && was.refs > 0 {
			deletes = append(deletes, func() { r.deleteNeigh(key, &ch, fail) })
		}
	}

	type unsetRoute struct {
		was counted[routeVal]
		rt  netlink.Route
	}
	routeWas := map[routeKey]unsetRoute{}
	for _, w := range unset.Routes {
		rt, err := routeAt(w, index)
		if err != nil {
			continue // its device is gone, and the route with it
		}
		key := keyOf(w.Dst, rt)
		if _, seen := routeWas[key]; !seen {
			routeWas[key] = unsetRoute{was: m.routes[key], rt: rt}
		}
		dropWanted(m.routes, key)
	}
	for _, w := range set.Routes {
		rt, err := routeAt(w, index)
		if err != nil {
			fail(err)
			continue
		}
		key, val := keyOf(w.Dst, rt), valOf(rt)
		was, in := m.routes[key]
		if in && was.v != val {
			fail(fmt.Errorf("route %s wanted twice, through different next hops", w.Dst))
			continue
		}
		if !in {
			was, in = routeWas[key].was, routeWas[key].was.refs > 0
		}
		addWanted(m.routes, key, val)
		if !in || was.v != val {
			writes = append(writes, r.routeSet(w, rt, in, &ch, fail))
		}
	}
	// Routes go before the next hops they used.
	var routeDeletes []func()
	for key, u := range routeWas {
		if _, kept := m.routes[key]; !kept && u.was.refs > 0 {
			routeDeletes = append(routeDeletes, func() { r.deleteRoute(u.rt, &ch, fail) })
		}
	}
	counts := Counts{EntryLink: len(links), EntryRoute: len(m.routes), EntryNeigh: len(m.neighs), EntryFDB: len(m.fdb)}
	r.mu.Unlock()

	r.batch.Make(writes)
	for _, del := range append(routeDeletes, deletes...) {
		del()
	}
	r.mu.Lock()
	r.model.trusted = len(errs) == 0
	r.mu.Unlock()
	return ch, counts, errors.Join(errs...)
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
