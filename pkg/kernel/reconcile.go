package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/pkg/ip"
)

// Kinds of entries, as used in Changes and metrics labels.
const (
	EntryLink  = "link"
	EntryAddr  = "addr"
	EntryRoute = "route"
	EntryNeigh = "neigh"
	EntryFDB   = "fdb"
)

// Changes counts what one Apply changed, by entry kind.
type Changes struct {
	Created map[string]int // entries that were missing (after a first sync: repairs)
	Updated map[string]int // entries that existed with other settings
	Deleted map[string]int // entries of ours that are no longer wanted
}

func newChanges() Changes {
	return Changes{Created: map[string]int{}, Updated: map[string]int{}, Deleted: map[string]int{}}
}

// Add adds the counts of o to c.
func (c Changes) Add(o Changes) {
	for kind, n := range o.Created {
		c.Created[kind] += n
	}
	for kind, n := range o.Updated {
		c.Updated[kind] += n
	}
	for kind, n := range o.Deleted {
		c.Deleted[kind] += n
	}
}

// Total is the number of changes of any kind.
func (c Changes) Total() int {
	n := 0
	for _, m := range []map[string]int{c.Created, c.Updated, c.Deleted} {
		for _, v := range m {
			n += v
		}
	}
	return n
}

// Counts is how many entries of each kind overlayd has in the kernel.
type Counts map[string]int

// Reconciler makes the kernel match a desired State. It is not safe for
// concurrent Apply calls; the daemon loop is its only caller.
type Reconciler struct {
	h      *netlink.Handle
	routes *netlink.Handle // for route dumps, with strict checking
	ns     netns.NsHandle  // the namespace worked in; netns.None() for the current one
	log    *zap.Logger

	mu    sync.Mutex
	owned map[int]string // ifindex -> name of links that are ours, for the event filter
}

// NewReconciler returns a reconciler for the current network namespace.
func NewReconciler(log *zap.Logger) (*Reconciler, error) {
	return NewReconcilerAt(netns.None(), log)
}

// NewReconcilerAt returns a reconciler working in the namespace ns.
func NewReconcilerAt(ns netns.NsHandle, log *zap.Logger) (*Reconciler, error) {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("opening netlink: %w", err)
	}
	// Route dumps go through a second handle with strict checking, with
	// which the kernel filters by protocol itself: a pass reads overlayd's
	// routes only, not the whole table. (Kernels before 4.20 ignore it, and
	// the filter here does the work.) Neighbour dumps stay on the plain
	// handle: strict checking refuses the way they name a device.
	routes, err := netlink.NewHandleAt(ns)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("opening netlink: %w", err)
	}
	routes.SetStrictCheck(true)
	return &Reconciler{h: h, routes: routes, ns: ns, log: log, owned: map[int]string{}}, nil
}

// Close releases the netlink handles.
func (r *Reconciler) Close() {
	r.h.Close()
	r.routes.Close()
}

// OwnedIndex reports whether ifindex is one of overlayd's links.
func (r *Reconciler) OwnedIndex(ifindex int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.owned[ifindex]
	return ok
}

// Apply changes the kernel so that overlayd's entries are exactly want. It
// applies every entry it can and returns all failures joined; the caller
// retries. Order matters for traffic in flight: links first, then the FDB
// and neighbour entries a route's next hop needs, then routes (replaced in
// place, never deleted and re-added), and removals last.
func (r *Reconciler) Apply(want State) (Changes, Counts, error) {
	ch := newChanges()
	if err := want.Validate(); err != nil {
		return ch, nil, err
	}
	var errs []error
	fail := func(err error) { errs = append(errs, err) }

	links, err := r.ensureLinks(want.Links, &ch, fail)
	if err != nil {
		return ch, nil, err
	}
	index := func(dev string) (int, error) {
		if l, ok := links[dev]; ok {
			return l.Attrs().Index, nil
		}
		if _, wanted := want.Link(dev); wanted {
			// Ours but not in place (e.g. a foreign device holds the name):
			// nothing may be added to whatever has that name now.
			return 0, fmt.Errorf("device %s is not in place", dev)
		}
		l, err := r.h.LinkByName(dev)
		if err != nil {
			return 0, fmt.Errorf("device %s: %w", dev, err)
		}
		return l.Attrs().Index, nil
	}

	haveFDB, haveNeighs, err := r.listNeighs(links)
	if err != nil {
		return ch, nil, err
	}
	wantFDB := r.ensureFDB(want.FDB, haveFDB, index, &ch, fail)
	wantNeighs := r.ensureNeighs(want.Neighs, haveNeighs, index, &ch, fail)

	haveRoutes, err := r.listRoutes()
	if err != nil {
		return ch, nil, err
	}
	wantRoutes := r.ensureRoutes(want.Routes, haveRoutes, index, &ch, fail)

	// Removals: only entries that are ours and not wanted.
	for key, rt := range haveRoutes {
		if !wantRoutes[key] {
			if err := r.h.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
				fail(fmt.Errorf("deleting route %s: %w", rt.Dst, err))
				continue
			}
			r.log.Info("removed route", zap.Stringer("dst", rt.Dst), zap.Stringer("gw", rt.Gw))
			ch.Deleted[EntryRoute]++
		}
	}
	for key := range haveNeighs {
		if !wantNeighs[key] {
			n := &netlink.Neigh{LinkIndex: key.index, Family: family(key.ip), IP: key.ip.AsSlice(), State: netlink.NUD_PERMANENT}
			if err := r.h.NeighDel(n); err != nil && !errors.Is(err, unix.ENOENT) {
				fail(fmt.Errorf("deleting neighbour %s: %w", key.ip, err))
				continue
			}
			ch.Deleted[EntryNeigh]++
		}
	}
	for key, dst := range haveFDB {
		if !wantFDB[key] {
			n := &netlink.Neigh{LinkIndex: key.index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
				State: netlink.NUD_PERMANENT, HardwareAddr: key.mac[:], IP: dst.AsSlice()}
			if err := r.h.NeighDel(n); err != nil && !errors.Is(err, unix.ENOENT) {
				fail(fmt.Errorf("deleting FDB entry %s: %w", net.HardwareAddr(key.mac[:]), err))
				continue
			}
			ch.Deleted[EntryFDB]++
		}
	}
	r.deleteStaleLinks(want, &ch, fail)

	counts := Counts{
		EntryLink:  len(want.Links),
		EntryRoute: len(wantRoutes),
		EntryNeigh: len(wantNeighs),
		EntryFDB:   len(wantFDB),
	}
	return ch, counts, errors.Join(errs...)
}

// ApplyLinks creates, replaces or adjusts the wanted links and removes
// nothing. The daemon uses it to have a new device in place, and a datapath
// attached to it, before any route points into it.
func (r *Reconciler) ApplyLinks(want []Link) (Changes, error) {
	ch := newChanges()
	var errs []error
	_, err := r.ensureLinks(want, &ch, func(err error) { errs = append(errs, err) })
	if err != nil {
		return ch, err
	}
	return ch, errors.Join(errs...)
}

// ensureLinks creates, replaces or adjusts every wanted link and returns
// them by name. A link of the wanted name that is not ours is an error: it
// is never touched.
func (r *Reconciler) ensureLinks(want []Link, ch *Changes, fail func(error)) (map[string]netlink.Link, error) {
	all, err := r.h.LinkList()
	if err != nil { // including an interrupted dump: the caller retries
		return nil, fmt.Errorf("listing links: %w", err)
	}
	byName := map[string]netlink.Link{}
	owned := map[int]string{}
	for _, l := range all {
		byName[l.Attrs().Name] = l
		if l.Attrs().Alias == LinkAlias {
			owned[l.Attrs().Index] = l.Attrs().Name
		}
	}

	out := map[string]netlink.Link{}
	for _, w := range want {
		cur := byName[w.Name]
		if cur != nil && cur.Attrs().Alias != LinkAlias {
			if cur.Type() != string(w.Kind) && !(w.Kind == KindTUN && cur.Type() == "tuntap") {
				fail(fmt.Errorf("link %s exists and is not overlayd's (type %s, no alias %q): remove it or configure another name", w.Name, cur.Type(), LinkAlias))
				continue
			}
			// Our name and kind but no mark: created by us before the alias
			// could be set, or by an older version. Adopt it.
			r.log.Info("adopting link", zap.String("link", w.Name))
		}
		if cur != nil && !r.linkMatches(cur, w) {
			r.log.Info("replacing link with wrong settings", zap.String("link", w.Name), zap.String("type", cur.Type()))
			if err := r.h.LinkDel(cur); err != nil {
				fail(fmt.Errorf("deleting link %s to recreate it: %w", w.Name, err))
				continue
			}
			ch.Updated[EntryLink]++
			cur = nil
		}
		if cur == nil {
			l, err := r.createLink(w)
			if err != nil {
				fail(err)
				continue
			}
			r.log.Info("created link", zap.String("link", w.Name), zap.String("kind", string(w.Kind)))
			ch.Created[EntryLink]++
			cur = l
		}
		if err := r.adjustLink(cur, w, ch); err != nil {
			fail(err)
		}
		out[w.Name] = cur
		owned[cur.Attrs().Index] = w.Name
	}
	r.mu.Lock()
	r.owned = owned
	r.mu.Unlock()
	return out, nil
}

// linkMatches reports whether an existing link has the settings that can
// only be chosen at creation.
func (r *Reconciler) linkMatches(cur netlink.Link, w Link) bool {
	switch w.Kind {
	case KindVXLAN:
		vx, ok := cur.(*netlink.Vxlan)
		if !ok {
			return false
		}
		underlay, err := r.h.LinkByName(w.VXLAN.Underlay)
		if err != nil {
			return false
		}
		local, _ := netip.AddrFromSlice(vx.SrcAddr)
		return vx.VxlanId == w.VXLAN.VNI && vx.Port == w.VXLAN.Port && local.Unmap() == w.VXLAN.Local &&
			vx.VtepDevIndex == underlay.Attrs().Index && vx.GBP == w.VXLAN.GBP && vx.Learning == w.VXLAN.Learning
	case KindTUN:
		tun, ok := cur.(*netlink.Tuntap)
		return ok && tun.Mode == netlink.TUNTAP_MODE_TUN && tun.Flags&TUNFlags == TUNFlags
	}
	return false
}

// TUNFlags are the flags of the udp backend's TUN device: no packet
// information header, a virtio-net header for segmentation offloads. They
// are the flags pkg/udptunnel attaches with; a device with others is replaced.
const TUNFlags = netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR

func (r *Reconciler) createLink(w Link) (netlink.Link, error) {
	attrs := netlink.LinkAttrs{Name: w.Name, MTU: w.MTU, Alias: LinkAlias, HardwareAddr: w.MAC}
	var l netlink.Link
	switch w.Kind {
	case KindVXLAN:
		underlay, err := r.h.LinkByName(w.VXLAN.Underlay)
		if err != nil {
			return nil, fmt.Errorf("creating %s: underlay device %s: %w", w.Name, w.VXLAN.Underlay, err)
		}
		l = &netlink.Vxlan{
			LinkAttrs:    attrs,
			VxlanId:      w.VXLAN.VNI,
			VtepDevIndex: underlay.Attrs().Index,
			SrcAddr:      w.VXLAN.Local.AsSlice(),
			Port:         w.VXLAN.Port,
			Learning:     w.VXLAN.Learning,
			GBP:          w.VXLAN.GBP,
		}
	case KindTUN:
		// A persistent TUN outlives the agent, so a restart keeps the device,
		// its address and its routes; the datapath re-attaches.
		attrs.HardwareAddr = nil
		l = &netlink.Tuntap{LinkAttrs: attrs, Mode: netlink.TUNTAP_MODE_TUN, Flags: TUNFlags}
	default:
		return nil, fmt.Errorf("creating %s: unknown link kind %q", w.Name, w.Kind)
	}
	add := func() error { return r.h.LinkAdd(l) }
	if w.Kind == KindTUN {
		// A TUN is created by an ioctl on /dev/net/tun, which acts in the
		// calling thread's namespace, not the netlink handle's.
		add = func() error { return r.inNS(func() error { return r.h.LinkAdd(l) }) }
	}
	if err := add(); err != nil {
		return nil, fmt.Errorf("creating %s link %s: %w", w.Kind, w.Name, err)
	}
	if tun, ok := l.(*netlink.Tuntap); ok {
		for _, f := range tun.Fds {
			f.Close()
		}
	}
	created, err := r.h.LinkByName(w.Name)
	if err != nil {
		return nil, fmt.Errorf("reading back %s: %w", w.Name, err)
	}
	return created, nil
}

// inNS runs fn on a thread switched into the reconciler's namespace. The
// thread returns to the scheduler only once back in its own namespace; one
// that cannot go back stays locked and ends with its goroutine.
func (r *Reconciler) inNS(fn func() error) error {
	if !r.ns.IsOpen() {
		return fn() // the current namespace
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(r.ns); err != nil {
			errc <- fmt.Errorf("entering network namespace: %w", err)
			return
		}
		ferr := fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// RxPackets returns how many packets the link named name has received: for
// a tunnel device, how much traffic arrived through the tunnel.
func (r *Reconciler) RxPackets(name string) (uint64, error) {
	l, err := r.h.LinkByName(name)
	if err != nil {
		return 0, err
	}
	if st := l.Attrs().Statistics; st != nil {
		return st.RxPackets, nil
	}
	return 0, nil
}

// adjustLink sets what can change on a live link: alias, MTU, MAC,
// addresses, and up.
func (r *Reconciler) adjustLink(l netlink.Link, w Link, ch *Changes) error {
	a := l.Attrs()
	if a.Alias != LinkAlias {
		if err := r.h.LinkSetAlias(l, LinkAlias); err != nil {
			return fmt.Errorf("marking %s as overlayd's: %w", w.Name, err)
		}
	}
	if w.MTU > 0 && a.MTU != w.MTU {
		if err := r.h.LinkSetMTU(l, w.MTU); err != nil {
			return fmt.Errorf("setting MTU %d on %s: %w", w.MTU, w.Name, err)
		}
		ch.Updated[EntryLink]++
	}
	if w.MAC != nil && !slices.Equal(a.HardwareAddr, w.MAC) {
		if err := r.h.LinkSetHardwareAddr(l, w.MAC); err != nil {
			return fmt.Errorf("setting MAC %s on %s: %w", w.MAC, w.Name, err)
		}
		ch.Updated[EntryLink]++
	}
	if err := r.ensureAddrs(l, w, ch); err != nil {
		return err
	}
	if a.Flags&net.FlagUp == 0 {
		if err := r.h.LinkSetUp(l); err != nil {
			return fmt.Errorf("setting %s up: %w", w.Name, err)
		}
		ch.Updated[EntryLink]++
	}
	return nil
}

func (r *Reconciler) ensureAddrs(l netlink.Link, w Link, ch *Changes) error {
	have, err := r.h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("listing addresses of %s: %w", w.Name, err)
	}
	wanted := map[netip.Prefix]bool{}
	for _, p := range w.Addrs {
		wanted[p] = true
	}
	present := map[netip.Prefix]bool{}
	for _, a := range have {
		p, ok := ip.PrefixFromIPNet(a.IPNet)
		if !ok {
			continue
		}
		if p.Addr().IsLinkLocalUnicast() {
			continue // the kernel's own IPv6 link-local address
		}
		present[p] = true
		if !wanted[p] {
			if err := r.h.AddrDel(l, &a); err != nil {
				return fmt.Errorf("removing address %s from %s: %w", p, w.Name, err)
			}
			ch.Deleted[EntryAddr]++
		}
	}
	for _, p := range w.Addrs {
		if present[p] {
			continue
		}
		if err := r.h.AddrReplace(l, &netlink.Addr{IPNet: ip.IPNet(p)}); err != nil {
			return fmt.Errorf("adding address %s to %s: %w", p, w.Name, err)
		}
		ch.Created[EntryAddr]++
	}
	return nil
}

// deleteStaleLinks removes links that carry overlayd's alias but are not
// wanted: devices of a backend no longer in use.
func (r *Reconciler) deleteStaleLinks(want State, ch *Changes, fail func(error)) {
	r.mu.Lock()
	owned := make(map[int]string, len(r.owned))
	for k, v := range r.owned {
		owned[k] = v
	}
	r.mu.Unlock()
	for idx, name := range owned {
		if _, ok := want.Link(name); ok {
			continue
		}
		l, err := r.h.LinkByIndex(idx)
		if err != nil {
			continue // already gone
		}
		if l.Attrs().Alias != LinkAlias {
			continue
		}
		if err := r.h.LinkDel(l); err != nil {
			fail(fmt.Errorf("deleting link %s: %w", name, err))
			continue
		}
		r.log.Info("removed link no longer in use", zap.String("link", name))
		ch.Deleted[EntryLink]++
		r.mu.Lock()
		delete(r.owned, idx)
		r.mu.Unlock()
	}
}

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

func (r *Reconciler) ensureFDB(want []FDBEntry, have map[fdbKey]netip.Addr, index func(string) (int, error), ch *Changes, fail func(error)) map[fdbKey]bool {
	keep := make(map[fdbKey]bool, len(want))
	for _, f := range want {
		idx, err := index(f.Dev)
		if err != nil {
			fail(fmt.Errorf("FDB entry %s: %w", f, err))
			continue
		}
		mac, ok := toMAC48(f.MAC)
		if !ok {
			fail(fmt.Errorf("FDB entry %s: not a 48-bit MAC address", f))
			continue
		}
		key := fdbKey{idx, mac}
		keep[key] = true
		dst, exists := have[key]
		if exists && dst == f.Dst {
			continue
		}
		n := &netlink.Neigh{
			LinkIndex:    idx,
			Family:       unix.AF_BRIDGE,
			State:        netlink.NUD_PERMANENT,
			Flags:        netlink.NTF_SELF,
			IP:           f.Dst.AsSlice(),
			HardwareAddr: f.MAC,
		}
		if err := r.h.NeighSet(n); err != nil {
			fail(fmt.Errorf("setting FDB entry %s: %w", f, err))
			continue
		}
		countSet(ch, EntryFDB, exists)
	}
	return keep
}

func (r *Reconciler) ensureNeighs(want []Neigh, have map[neighKey]mac48, index func(string) (int, error), ch *Changes, fail func(error)) map[neighKey]bool {
	keep := make(map[neighKey]bool, len(want))
	for _, w := range want {
		idx, err := index(w.Dev)
		if err != nil {
			fail(fmt.Errorf("neighbour %s: %w", w, err))
			continue
		}
		mac, ok := toMAC48(w.MAC)
		if !ok {
			fail(fmt.Errorf("neighbour %s: not a 48-bit MAC address", w))
			continue
		}
		key := neighKey{idx, w.IP}
		keep[key] = true
		cur, exists := have[key]
		if exists && cur == mac {
			continue
		}
		n := &netlink.Neigh{
			LinkIndex:    idx,
			Family:       family(w.IP),
			State:        netlink.NUD_PERMANENT,
			IP:           w.IP.AsSlice(),
			HardwareAddr: w.MAC,
		}
		if err := r.h.NeighSet(n); err != nil {
			fail(fmt.Errorf("setting neighbour %s: %w", w, err))
			continue
		}
		countSet(ch, EntryNeigh, exists)
	}
	return keep
}

func countSet(ch *Changes, kind string, existed bool) {
	if existed {
		ch.Updated[kind]++
	} else {
		ch.Created[kind]++
	}
}

// routeKey identifies a main-table route by destination.
type routeKey netip.Prefix

// listRoutes returns overlayd's routes (by protocol) in the main table.
func (r *Reconciler) listRoutes() (map[routeKey]netlink.Route, error) {
	out := map[routeKey]netlink.Route{}
	err := r.routes.RouteListFilteredIter(netlink.FAMILY_ALL, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL,
		func(rt netlink.Route) bool {
			if p, ok := ip.PrefixFromIPNet(rt.Dst); ok {
				out[routeKey(p.Masked())] = rt
			}
			return true
		})
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	return out, nil
}

func (r *Reconciler) ensureRoutes(want []Route, have map[routeKey]netlink.Route, index func(string) (int, error), ch *Changes, fail func(error)) map[routeKey]bool {
	keep := map[routeKey]bool{}
	for _, w := range want {
		key := routeKey(w.Dst.Masked())
		keep[key] = true
		idx, err := index(w.Dev)
		if err != nil {
			fail(fmt.Errorf("route %s: %w", w, err))
			continue
		}
		rt := netlink.Route{
			LinkIndex: idx,
			Dst:       ip.IPNet(w.Dst.Masked()),
			Protocol:  RouteProtocol,
			Table:     unix.RT_TABLE_MAIN,
			Scope:     netlink.SCOPE_UNIVERSE,
		}
		if w.Gw.IsValid() {
			rt.Gw = w.Gw.AsSlice()
		} else {
			rt.Scope = netlink.SCOPE_LINK
		}
		if w.OnLink {
			rt.Flags = int(netlink.FLAG_ONLINK)
		}
		cur, exists := have[key]
		if exists && routeMatches(cur, rt) {
			continue
		}
		if err := r.h.RouteReplace(&rt); err != nil {
			fail(fmt.Errorf("setting route %s: %w", w, err))
			continue
		}
		if exists {
			r.log.Info("updated route", zap.Stringer("route", w))
		} else {
			r.log.Debug("added route", zap.Stringer("route", w))
		}
		countSet(ch, EntryRoute, exists)
	}
	return keep
}

func routeMatches(cur, want netlink.Route) bool {
	return cur.LinkIndex == want.LinkIndex && cur.Gw.Equal(want.Gw) && cur.Scope == want.Scope &&
		cur.Flags&int(netlink.FLAG_ONLINK) == want.Flags&int(netlink.FLAG_ONLINK) &&
		len(cur.MultiPath) == 0
}
