package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/pkg/ip"
)

// Taking over what another agent (flanneld) left on the node: its devices,
// adopted in place so that nothing that reaches them changes, and its routes,
// removed once overlayd's are in. Nothing here runs unless the loop asks.

// LinkInfo is what a takeover needs to know of an existing link.
type LinkInfo struct {
	Name, Type, Alias string // Type is netlink's: "vxlan", "tuntap", ...
	MAC               net.HardwareAddr
	VNI, Port         int // for vxlan
}

// Ours reports whether the link carries overlayd's alias.
func (l LinkInfo) Ours() bool { return l.Alias == LinkAlias }

// Links lists the namespace's links.
func (r *Reconciler) Links() ([]LinkInfo, error) {
	all, err := r.h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	out := make([]LinkInfo, 0, len(all))
	for _, l := range all {
		a := l.Attrs()
		li := LinkInfo{Name: a.Name, Type: l.Type(), Alias: a.Alias, MAC: a.HardwareAddr}
		if vx, ok := l.(*netlink.Vxlan); ok {
			li.VNI, li.Port = vx.VxlanId, vx.Port
		}
		out = append(out, li)
	}
	return out, nil
}

// OwnMACs returns the MACs of overlayd's links by name: a device that is
// already in place keeps its MAC, so that peers need no update.
func (r *Reconciler) OwnMACs() (map[string]net.HardwareAddr, error) {
	links, err := r.Links()
	if err != nil {
		return nil, err
	}
	out := map[string]net.HardwareAddr{}
	for _, l := range links {
		if l.Ours() && len(l.MAC) == 6 {
			out[l.Name] = l.MAC
		}
	}
	return out, nil
}

// Adopt makes the link from overlayd's under the name to, keeping it as it
// is: its MAC, addresses, routes and neighbour and FDB entries stay, so
// traffic through it never stops. The kernel renames a device that is up
// (Linux 6.x); one that refuses is renamed down, which drops its routes
// until the next pass puts them back: a short interruption, logged.
func (r *Reconciler) Adopt(from, to string) error {
	l, err := r.h.LinkByName(from)
	if err != nil {
		return fmt.Errorf("adopting %s: %w", from, err)
	}
	if err := r.h.LinkSetName(l, to); err != nil {
		if !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("renaming %s to %s: %w", from, to, err)
		}
		r.log.Warn("the kernel cannot rename a device that is up; renaming it down (a short interruption)", zap.String("link", from))
		if err := r.h.LinkSetDown(l); err != nil {
			return fmt.Errorf("setting %s down to rename it: %w", from, err)
		}
		err := r.h.LinkSetName(l, to)
		if uerr := r.h.LinkSetUp(l); uerr != nil && err == nil {
			err = uerr
		}
		if err != nil {
			return fmt.Errorf("renaming %s to %s: %w", from, to, err)
		}
	}
	if err := r.h.LinkSetAlias(l, LinkAlias); err != nil {
		return fmt.Errorf("marking %s as overlayd's: %w", to, err)
	}
	r.log.Info("adopted link", zap.String("from", from), zap.String("link", to), zap.Stringer("mac", l.Attrs().HardwareAddr))
	return nil
}

// RemoveLink deletes the link name, one that is not overlayd's (e.g. the
// TUN device of a stopped flanneld). A missing link is not an error.
func (r *Reconciler) RemoveLink(name string) error {
	l, err := r.h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("finding %s: %w", name, err)
	}
	if err := r.h.LinkDel(l); err != nil {
		return fmt.Errorf("deleting %s: %w", name, err)
	}
	r.log.Info("removed link left by another agent", zap.String("link", name))
	return nil
}

// RouteInfo is what a takeover needs to know of an existing route.
type RouteInfo struct {
	Dst       netip.Prefix
	Gw        netip.Addr
	Dev       string // empty for a blackhole
	Protocol  int
	Blackhole bool
}

// RemoveRoutes deletes the main-table routes that are not overlayd's and
// that match selects, and returns how many it deleted.
func (r *Reconciler) RemoveRoutes(match func(RouteInfo) bool) (int, error) {
	links, err := r.h.LinkList()
	if err != nil {
		return 0, fmt.Errorf("listing links: %w", err)
	}
	names := make(map[int]string, len(links))
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	routes, err := r.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return 0, fmt.Errorf("listing routes: %w", err)
	}
	var errs []error
	n := 0
	for _, rt := range routes {
		dst, ok := ip.PrefixFromIPNet(rt.Dst)
		if !ok || int(rt.Protocol) == RouteProtocol {
			continue
		}
		info := RouteInfo{Dst: dst.Masked(), Dev: names[rt.LinkIndex], Protocol: int(rt.Protocol), Blackhole: rt.Type == unix.RTN_BLACKHOLE}
		info.Gw, _ = netip.AddrFromSlice(rt.Gw)
		info.Gw = info.Gw.Unmap()
		if !match(info) {
			continue
		}
		if err := r.h.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("deleting route %s: %w", dst, err))
			continue
		}
		r.log.Info("removed route left by another agent", zap.Stringer("dst", dst), zap.String("dev", info.Dev), zap.Stringer("gw", info.Gw))
		n++
	}
	return n, errors.Join(errs...)
}
