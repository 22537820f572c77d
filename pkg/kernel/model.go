package kernel

import (
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/pkg/ip"
)

// model is what the last Apply (and the ApplyChanged calls since) wanted
// the kernel to hold of overlayd's, keyed as the kernel keys its entries.
// It lets the event watch tell the echo of a write of ours (an event that
// leaves an entry as wanted) from a change that needs a pass, and lets
// ApplyChanged set and remove a few peers' entries without reading every
// table back. Each entry counts the wanted entries it stands for, so that
// one peer letting go of an entry another still wants leaves it. A table
// is nil until an Apply has built it: every event about it needs a pass.
type model struct {
	// trusted: the last Apply, and every ApplyChanged since, set all they
	// wanted, so the kernel holds the model (but for changes since, which
	// the watch reports).
	trusted bool
	links   map[string]int // wanted device name -> ifindex
	routes  map[routeKey]counted[routeVal]
	neighs  map[neighKey]counted[mac48]
	fdb     map[fdbKey]counted[netip.Addr]
}

type counted[V comparable] struct {
	v    V
	refs int32
}

// routeVal is what a route of ours is besides its key, as compared with
// what the kernel reports.
type routeVal struct {
	index      int
	gw         netip.Addr
	scope, typ uint8
	onlink     bool
	multipath  bool // never ours: a route with next hops of its own is not as wanted
}

func valOf(rt netlink.Route) routeVal {
	gw, _ := netip.AddrFromSlice(rt.Gw)
	return routeVal{index: rt.LinkIndex, gw: gw.Unmap(), scope: uint8(rt.Scope), typ: uint8(rt.Type),
		onlink: rt.Flags&int(netlink.FLAG_ONLINK) != 0, multipath: len(rt.MultiPath) > 0}
}

// addWanted adds one wanted entry of value v under k to m, and reports whether
// it was already there with that value.
func addWanted[K comparable, V comparable](m map[K]counted[V], k K, v V) (same bool) {
	c, ok := m[k]
	m[k] = counted[V]{v: v, refs: c.refs + 1}
	return ok && c.v == v
}

// dropWanted drops one wanted entry under k from m, and reports whether no
// wanted entry is left under it.
func dropWanted[K comparable, V comparable](m map[K]counted[V], k K) (gone bool) {
	c, ok := m[k]
	if !ok {
		return false
	}
	if c.refs <= 1 {
		delete(m, k)
		return true
	}
	c.refs--
	m[k] = c
	return false
}

// Event filtering (watch.go): true when the event leaves the entry as the
// model wants it — the echo of our own write, or of someone writing what
// we want anyway — so that it needs no pass.

func (r *Reconciler) routeEventExpected(u netlink.RouteUpdate) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.model.routes == nil || u.Protocol != RouteProtocol {
		return false
	}
	dst, ok := ip.PrefixFromIPNet(u.Dst)
	if !ok || (u.Table != unix.RT_TABLE_MAIN && u.Table != 0) {
		return false
	}
	c, ours := r.model.routes[keyOf(dst, u.Route)]
	if u.Type == unix.RTM_DELROUTE {
		return !ours
	}
	return ours && c.v == valOf(u.Route)
}

func (r *Reconciler) neighEventExpected(u netlink.NeighUpdate) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	permanent := u.State&netlink.NUD_PERMANENT != 0
	mac, okMAC := toMAC48(u.HardwareAddr)
	a, _ := netip.AddrFromSlice(u.IP)
	a = a.Unmap()
	var ours, same, known bool
	if u.Family == unix.AF_BRIDGE {
		var c counted[netip.Addr]
		c, ours = r.model.fdb[fdbKey{u.LinkIndex, mac}]
		same, known = ours && c.v == a, r.model.fdb != nil && okMAC
	} else {
		var c counted[mac48]
		c, ours = r.model.neighs[neighKey{u.LinkIndex, a}]
		same, known = ours && okMAC && c.v == mac, r.model.neighs != nil
	}
	switch {
	case !known:
		// No model yet: only permanent entries are ours to look at.
		return !permanent
	case u.Type == unix.RTM_DELNEIGH:
		// A deleted entry is reported as it was left (a deleted permanent
		// neighbour as failed): ours only if wanted.
		return !ours
	case permanent:
		return same
	default:
		// A dynamic entry: the kernel's, unless it took a wanted entry's
		// place.
		return !ours
	}
}
