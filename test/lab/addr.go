package lab

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Addr returns the host's main address of one family: Host.IP6 if v6, else
// Host.IP. It is the zero Addr if the host has none of that family.
func (h *Host) Addr(v6 bool) netip.Addr {
	if v6 {
		return h.IP6
	}
	return h.IP
}

// AddRoute adds a route to dst via the gateway via inside the namespace,
// e.g. what host-gw would install, set by a test by hand.
func (h *Host) AddRoute(dst netip.Prefix, via netip.Addr) error {
	nl, err := h.Netlink()
	if err != nil {
		return err
	}
	defer nl.Close()
	if err := nl.RouteAdd(&netlink.Route{Dst: prefixIPNet(dst.Masked()), Gw: net.IP(via.AsSlice())}); err != nil {
		return fmt.Errorf("%s: adding route to %s via %s: %w", h.NS, dst, via, err)
	}
	return nil
}

// addAddrs gives link, still down, the addresses the lab assigns. On a
// link with IPv6 nothing waits for duplicate address detection: the lab's
// addresses are added with nodad, and the link's accept_dad is off for the
// link-local address it gets when it comes up (a router solicits neighbours
// for forwarded packets from that one). IPv6 addresses also stay on the
// link while it is down, as IPv4 addresses do (the kernel's default for
// IPv6 is to flush them).
func (h *Host) addAddrs(nl *netlink.Handle, link netlink.Link, addrs []netip.Prefix) error {
	name := link.Attrs().Name
	if slices.ContainsFunc(addrs, func(a netip.Prefix) bool { return a.Addr().Is6() }) {
		for key, value := range map[string]string{"accept_dad": "0", "keep_addr_on_down": "1"} {
			if err := h.SetSysctl("net/ipv6/conf/"+name+"/"+key, value); err != nil {
				return err
			}
		}
	}
	for _, a := range addrs {
		addr := &netlink.Addr{IPNet: prefixIPNet(a)}
		if a.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := nl.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("%s: adding %s to %s: %w", h.NS, a, name, err)
		}
	}
	return nil
}

// addDefaultRoute routes everything of gw's family via gw on link.
func addDefaultRoute(nl *netlink.Handle, h *Host, link netlink.Link, gw netip.Addr) error {
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.IP(gw.AsSlice())}
	if err := nl.RouteAdd(route); err != nil {
		return fmt.Errorf("%s: adding default route via %s: %w", h.NS, gw, err)
	}
	return nil
}

// prefixIPNet is an address with its prefix length (not masked), as
// netlink wants for interface addresses.
func prefixIPNet(p netip.Prefix) *net.IPNet {
	bits := p.Addr().BitLen()
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)}
}
