package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/pkg/nlbatch"
)

// mac48 is a MAC address as a comparable value.
type mac48 [6]byte

func toMAC48(hw net.HardwareAddr) (mac48, bool) {
	var m mac48
	if len(hw) != len(m) {
		return m, false
	}
	copy(m[:], hw)
	return m, true
}

// neighKey identifies a neighbour entry; fdbKey an FDB entry.
type (
	neighKey struct {
		index int
		ip    netip.Addr
	}
	fdbKey struct {
		index int
		mac   mac48
	}
)

func family(a netip.Addr) int {
	if a.Is6() {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

// ensureNeighs sets the wanted FDB entries, then the wanted neighbour
// entries: the next hops routes need. For each of the two it returns the
// removal of the permanent entries on our links that are not wanted.
func (r *Reconciler) ensureNeighs(want State, links map[string]netlink.Link, index devIndex, ch *Changes, fail func(error)) (fdb, neighs ensured, err error) {
	haveFDB, haveNeighs, err := r.listNeighs(links)
	if err != nil {
		return ensured{}, ensured{}, err
	}
	keepFDB := r.setFDB(want.FDB, haveFDB, index, ch, fail)
	keepNeighs := r.setNeighs(want.Neighs, haveNeighs, index, ch, fail)
	fdb = ensured{wanted: len(keepFDB), prune: func() { r.pruneFDB(haveFDB, keepFDB, ch, fail) }}
	neighs = ensured{wanted: len(keepNeighs), prune: func() { r.pruneNeighs(haveNeighs, keepNeighs, ch, fail) }}
	return fdb, neighs, nil
}

// listNeighs returns the permanent FDB entries (MAC -> destination) and
// neighbour entries (address -> MAC) on our links.
func (r *Reconciler) listNeighs(links map[string]netlink.Link) (fdb map[fdbKey]netip.Addr, neighs map[neighKey]mac48, err error) {
	fdb, neighs = map[fdbKey]netip.Addr{}, map[neighKey]mac48{}
	ours := map[int]bool{}
	for _, l := range links {
		ours[l.Attrs().Index] = true
	}
	if len(ours) == 0 {
		return fdb, neighs, nil
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6, unix.AF_BRIDGE} {
		list, err := r.h.NeighList(0, fam)
		if err != nil {
			return nil, nil, fmt.Errorf("listing neighbours: %w", err)
		}
		for _, n := range list {
			if !ours[n.LinkIndex] || n.State&netlink.NUD_PERMANENT == 0 {
				continue
			}
			mac, ok := toMAC48(n.HardwareAddr)
			if !ok {
				continue
			}
			a, _ := netip.AddrFromSlice(n.IP)
			if fam == unix.AF_BRIDGE {
				fdb[fdbKey{n.LinkIndex, mac}] = a.Unmap()
			} else {
				neighs[neighKey{n.LinkIndex, a.Unmap()}] = mac
			}
		}
	}
	return fdb, neighs, nil
}

// setFDB sets every wanted FDB entry that is missing or points elsewhere and
// returns all wanted ones.
func (r *Reconciler) setFDB(want []FDBEntry, have map[fdbKey]netip.Addr, index devIndex, ch *Changes, fail func(error)) map[fdbKey]counted[netip.Addr] {
	keep := make(map[fdbKey]counted[netip.Addr], len(want))
	var set []nlbatch.Change
	for _, f := range want {
		key, err := fdbKeyOf(f, index)
		if err != nil {
			fail(err)
			continue
		}
		addWanted(keep, key, f.Dst)
		dst, exists := have[key]
		if exists && dst == f.Dst {
			continue
		}
		set = append(set, r.fdbSet(f, key, exists, ch, fail))
	}
	r.mu.Lock()
	r.model.fdb = keep // before the writes: their events are its echo
	r.mu.Unlock()
	r.batch.Make(set)
	return keep
}

func fdbKeyOf(f FDBEntry, index devIndex) (fdbKey, error) {
	idx, err := index(f.Dev)
	if err != nil {
		return fdbKey{}, fmt.Errorf("FDB entry %s: %w", f, err)
	}
	mac, ok := toMAC48(f.MAC)
	if !ok {
		return fdbKey{}, fmt.Errorf("FDB entry %s: not a 48-bit MAC address", f)
	}
	return fdbKey{idx, mac}, nil
}

// fdbSet is the batch change setting f (at key), counted in ch.
func (r *Reconciler) fdbSet(f FDBEntry, key fdbKey, exists bool, ch *Changes, fail func(error)) nlbatch.Change {
	n := &netlink.Neigh{LinkIndex: key.index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF,
		IP: f.Dst.AsSlice(), HardwareAddr: key.mac[:]}
	return r.neighSetChange(n, func(err error) {
		if err != nil {
			fail(fmt.Errorf("setting FDB entry %s: %w", f, err))
			return
		}
		countSet(ch, EntryFDB, exists)
	})
}

func (r *Reconciler) neighSetChange(n *netlink.Neigh, done func(error)) nlbatch.Change {
	return nlbatch.Change{Msg: neighSetRequest(n), Alone: func() error { return r.h.NeighSet(n) }, Done: done}
}

// setNeighs sets every wanted neighbour entry that is missing or has
// another MAC and returns all wanted ones.
func (r *Reconciler) setNeighs(want []Neigh, have map[neighKey]mac48, index devIndex, ch *Changes, fail func(error)) map[neighKey]counted[mac48] {
	keep := make(map[neighKey]counted[mac48], len(want))
	var set []nlbatch.Change
	for _, w := range want {
		key, mac, err := neighKeyOf(w, index)
		if err != nil {
			fail(err)
			continue
		}
		addWanted(keep, key, mac)
		cur, exists := have[key]
		if exists && cur == mac {
			continue
		}
		set = append(set, r.neighSet(w, key, mac, exists, ch, fail))
	}
	r.mu.Lock()
	r.model.neighs = keep // before the writes: their events are its echo
	r.mu.Unlock()
	r.batch.Make(set)
	return keep
}

func neighKeyOf(w Neigh, index devIndex) (neighKey, mac48, error) {
	idx, err := index(w.Dev)
	if err != nil {
		return neighKey{}, mac48{}, fmt.Errorf("neighbour %s: %w", w, err)
	}
	mac, ok := toMAC48(w.MAC)
	if !ok {
		return neighKey{}, mac48{}, fmt.Errorf("neighbour %s: not a 48-bit MAC address", w)
	}
	return neighKey{idx, w.IP}, mac, nil
}

// neighSet is the batch change setting w (at key), counted in ch.
func (r *Reconciler) neighSet(w Neigh, key neighKey, mac mac48, exists bool, ch *Changes, fail func(error)) nlbatch.Change {
	n := &netlink.Neigh{LinkIndex: key.index, Family: family(w.IP), State: netlink.NUD_PERMANENT, IP: w.IP.AsSlice(), HardwareAddr: mac[:]}
	return r.neighSetChange(n, func(err error) {
		if err != nil {
			fail(fmt.Errorf("setting neighbour %s: %w", w, err))
			return
		}
		countSet(ch, EntryNeigh, exists)
	})
}

// pruneNeighs deletes the neighbour entries of have that are not kept.
func (r *Reconciler) pruneNeighs(have map[neighKey]mac48, keep map[neighKey]counted[mac48], ch *Changes, fail func(error)) {
	for key := range have {
		if _, ok := keep[key]; !ok {
			r.deleteNeigh(key, ch, fail)
		}
	}
}

func (r *Reconciler) deleteNeigh(key neighKey, ch *Changes, fail func(error)) {
	n := &netlink.Neigh{LinkIndex: key.index, Family: family(key.ip), IP: key.ip.AsSlice(), State: netlink.NUD_PERMANENT}
	if err := r.h.NeighDel(n); err != nil && !errors.Is(err, unix.ENOENT) {
		fail(fmt.Errorf("deleting neighbour %s: %w", key.ip, err))
		return
	}
	ch.Deleted[EntryNeigh]++
}

// pruneFDB deletes the FDB entries of have that are not kept.
func (r *Reconciler) pruneFDB(have map[fdbKey]netip.Addr, keep map[fdbKey]counted[netip.Addr], ch *Changes, fail func(error)) {
	for key, dst := range have {
		if _, ok := keep[key]; !ok {
			r.deleteFDB(key, dst, ch, fail)
		}
	}
}

func (r *Reconciler) deleteFDB(key fdbKey, dst netip.Addr, ch *Changes, fail func(error)) {
	n := &netlink.Neigh{LinkIndex: key.index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
		State: netlink.NUD_PERMANENT, HardwareAddr: key.mac[:], IP: dst.AsSlice()}
	if err := r.h.NeighDel(n); err != nil && !errors.Is(err, unix.ENOENT) {
		fail(fmt.Errorf("deleting FDB entry %s: %w", net.HardwareAddr(key.mac[:]), err))
		return
	}
	ch.Deleted[EntryFDB]++
}
