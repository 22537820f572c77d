package lab

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

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

// settleIPv6 waits until each of the links (of the lab's, with IPv6) has
// its link-local address, none of its addresses is tentative and each has
// joined its solicited-node multicast group, that neighbour solicitations
// for it are sent to. With DAD off the kernel still does the last two from
// a work queue, a while after an address is added or its link comes up
// (long if other namespaces come and go: the work takes the RTNL lock).
// Until then neighbours cannot resolve the address, and a router must
// solicit from its link-local address, so it sends nothing; either way the
// next try is a second later.
func (h *Host) settleIPv6(links ...string) error {
	nl, err := h.Netlink()
	if err != nil {
		return err
	}
	defer nl.Close()
	const timeout = 10 * time.Second
	deadline := time.Now().Add(timeout)
	for _, name := range links {
		link, err := nl.LinkByName(name)
		if err != nil {
			return fmt.Errorf("%s: %s: %w", h.NS, name, err)
		}
		for {
			unsettled, err := h.unsettledIPv6(nl, link)
			if err != nil {
				return err
			}
			if unsettled == "" {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: IPv6 on %s not settled after %s: %s", h.NS, name, timeout, unsettled)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	return nil
}

// unsettledIPv6 says what settleIPv6 still waits for on link, or "".
func (h *Host) unsettledIPv6(nl *netlink.Handle, link netlink.Link) (string, error) {
	name := link.Attrs().Name
	addrs, err := nl.AddrList(link, netlink.FAMILY_V6)
	if err != nil {
		return "", fmt.Errorf("%s: addresses of %s: %w", h.NS, name, err)
	}
	groups, err := h.joinedGroups(name)
	if err != nil {
		return "", err
	}
	linkLocal := false
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		linkLocal = linkLocal || ip.IsLinkLocalUnicast()
		switch {
		case a.Flags&unix.IFA_F_TENTATIVE != 0:
			return fmt.Sprintf("%s is tentative", a.IPNet), nil
		case !groups[solicitedNode(ip)]:
			return fmt.Sprintf("%s has not joined %s", a.IPNet, solicitedNode(ip)), nil
		}
	}
	if !linkLocal {
		return "no link-local address yet", nil
	}
	return "", nil
}

// solicitedNode is the multicast group neighbour solicitations for a are
// sent to: ff02::1:ff and a's last 24 bits.
func solicitedNode(a netip.Addr) netip.Addr {
	b := a.As16()
	return netip.AddrFrom16([16]byte{0: 0xff, 1: 0x02, 11: 0x01, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]})
}

// joinedGroups returns the IPv6 multicast groups link has joined.
func (h *Host) joinedGroups(link string) (map[netip.Addr]bool, error) {
	var data []byte
	err := h.Do(func() error {
		var err error
		// /proc/net is the main thread's namespace; thread-self is this one's.
		data, err = os.ReadFile("/proc/thread-self/net/igmp6")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: reading the IPv6 multicast groups: %w", h.NS, err)
	}
	groups := map[netip.Addr]bool{}
	// "<index> <link> <group, 32 hex digits> <users> <flags> <timer>"
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[1] != link {
			continue
		}
		var b [16]byte
		if n, err := hex.Decode(b[:], []byte(f[2])); err == nil && n == 16 {
			groups[netip.AddrFrom16(b)] = true
		}
	}
	return groups, nil
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
