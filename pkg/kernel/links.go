package kernel

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
)

// TUNFlags are the flags of the udp backend's TUN device: no packet
// information header, a virtio-net header for segmentation offloads, and
// multiple queues, so that a second agent (a surge upgrade) joins the
// device while the first still serves it. They are the flags pkg/udptunnel
// attaches with; a device with others is replaced.
const TUNFlags = netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_MULTI_QUEUE

// OwnedIndex reports whether ifindex is one of overlayd's links.
func (r *Reconciler) OwnedIndex(ifindex int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.owned[ifindex]
	return ok
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

// ensureLinks creates, replaces or adjusts every wanted link and returns
// them by name. A link of the wanted name that is not ours is an error: it
// is never touched. It also renews the owned-index map the event filter
// reads: every link with overlayd's alias, wanted or not.
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
	case KindWireGuard:
		return cur.Type() == string(KindWireGuard)
	}
	return false
}

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
	case KindWireGuard:
		attrs.HardwareAddr = nil // a layer 3 device
		l = &netlink.Wireguard{LinkAttrs: attrs}
	default:
		return nil, fmt.Errorf("creating %s: unknown link kind %q", w.Name, w.Kind)
	}
	add := func() error { return r.h.LinkAdd(l) }
	if w.Kind == KindTUN {
		// A TUN is created by an ioctl on /dev/net/tun, which acts in the
		// calling thread's namespace, not the netlink handle's.
		add = func() error { return InNamespace(r.ns, func() error { return r.h.LinkAdd(l) }) }
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
	if w.NoRouterAdvertisements {
		changed, err := r.ensureSysctl("net/ipv6/conf/"+w.Name+"/accept_ra", "0")
		if err != nil {
			return err
		}
		if changed {
			ch.Updated[EntryLink]++
		}
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

// devIndex resolves the device an entry is wanted on to its ifindex.
type devIndex func(dev string) (int, error)

// deviceIndex returns the resolver for this pass: a wanted link by what
// ensureLinks put in place, any other device (the underlay) by name.
func (r *Reconciler) deviceIndex(want State, links map[string]netlink.Link) devIndex {
	return func(dev string) (int, error) {
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
}

// pruneLinks removes links that carry overlayd's alias but are not wanted:
// devices of a backend no longer in use.
func (r *Reconciler) pruneLinks(want State, ch *Changes, fail func(error)) {
	r.mu.Lock()
	owned := maps.Clone(r.owned)
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
