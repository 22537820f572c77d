package kernel

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/pkg/ip"
)

// ensureAddrs gives the link l exactly the addresses w wants. Addresses are
// a setting of the link rather than a table of their own: they are adjusted
// with it, stale ones removed before the missing ones are added. The
// kernel's own IPv6 link-local address is left alone.
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
		addr := &netlink.Addr{IPNet: ip.IPNet(p)}
		if p.Addr().Is6() {
			// A tunnel's address has no one to conflict with: without
			// duplicate address detection it is usable at once.
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := r.h.AddrReplace(l, addr); err != nil {
			return fmt.Errorf("adding address %s to %s: %w", p, w.Name, err)
		}
		ch.Created[EntryAddr]++
	}
	return nil
}
