package ip

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NetlinkHost reads interfaces and routes of the current network namespace.
type NetlinkHost struct{}

var _ Host = NetlinkHost{}

// unusableAddr marks IPv6 addresses peers must not be told to send to: a
// temporary (privacy) address changes every few hours, a deprecated one is
// on its way out, one that failed duplicate address detection belongs to
// someone else. IPv6 only: the kernel uses the same bit as IFA_F_TEMPORARY
// for IFA_F_SECONDARY, which every IPv4 address after an interface's first
// in the same subnet carries, and which is perfectly usable.
const unusableAddr = unix.IFA_F_TEMPORARY | unix.IFA_F_DEPRECATED | unix.IFA_F_DADFAILED

func (NetlinkHost) Interfaces() ([]Interface, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	out := make([]Interface, 0, len(links))
	for _, l := range links {
		attrs := l.Attrs()
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", attrs.Name, err)
		}
		iface := Interface{
			Name:  attrs.Name,
			Index: attrs.Index,
			MTU:   attrs.MTU,
			Up:    attrs.Flags&net.FlagUp != 0,
		}
		for _, a := range addrs {
			if a.IP.To4() == nil && a.Flags&unusableAddr != 0 {
				continue
			}
			if p, ok := PrefixFromIPNet(a.IPNet); ok {
				iface.Addrs = append(iface.Addrs, p)
			}
		}
		out = append(out, iface)
	}
	return out, nil
}

func (NetlinkHost) DefaultRouteIndex(v6 bool) (int, error) {
	family := netlink.FAMILY_V4
	if v6 {
		family = netlink.FAMILY_V6
	}
	routes, err := netlink.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_TABLE)
	if err != nil {
		return 0, err
	}
	for _, r := range routes {
		if isDefault(r.Dst) && r.LinkIndex > 0 {
			return r.LinkIndex, nil
		}
		for _, nh := range r.MultiPath {
			if isDefault(r.Dst) && nh.LinkIndex > 0 {
				return nh.LinkIndex, nil
			}
		}
	}
	return 0, fmt.Errorf("no default route")
}

func isDefault(dst *net.IPNet) bool {
	if dst == nil {
		return true
	}
	ones, _ := dst.Mask.Size()
	return ones == 0
}

func (NetlinkHost) RouteIndex(dst netip.Addr) (int, error) {
	routes, err := netlink.RouteGet(dst.AsSlice())
	if err != nil {
		return 0, err
	}
	if len(routes) == 0 || routes[0].LinkIndex == 0 {
		return 0, fmt.Errorf("no route to %s", dst)
	}
	return routes[0].LinkIndex, nil
}
