package bench

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/backend/vxlan"
	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/test/lab"
)

// vxlanDevs are the vxlan backend's devices with the default VNI and port:
// the IPv4 one (false) and the IPv6 one (true).
var vxlanDevs = map[bool]string{
	false: vxlan.DeviceName(1, vxlan.DefaultPort),
	true:  vxlan.DeviceName6(1, vxlan.DefaultPort),
}

// entryCounts are the entries overlayd owns on a node in one family: its
// routes (by protocol), and the permanent neighbour and FDB entries of the
// family's vxlan device.
type entryCounts struct{ routes, neighs, fdb int }

func (k entryCounts) String() string {
	return fmt.Sprintf("%d routes, %d neighbours, %d FDB entries", k.routes, k.neighs, k.fdb)
}

// kernelCounts are a node's entryCounts of IPv4 and, if dual, of IPv6.
type kernelCounts struct {
	ipv4, ipv6 entryCounts
	dual       bool // ipv6 was counted
}

// wantCounts are the counts once size peers are programmed: a route, a
// neighbour and an FDB entry per peer in IPv4 and, if dual, in IPv6.
func wantCounts(size int, dual bool) kernelCounts {
	k := kernelCounts{ipv4: entryCounts{size, size, size}, dual: dual}
	if dual {
		k.ipv6 = k.ipv4
	}
	return k
}

func (k kernelCounts) String() string {
	if !k.dual {
		return k.ipv4.String()
	}
	return fmt.Sprintf("IPv4 %s; IPv6 %s", k.ipv4, k.ipv6)
}

// countKernel counts what overlayd has programmed on the node in IPv4 and,
// if dual, in IPv6, with netlink dumps (cheaper than `ip -j` for thousands
// of entries).
func countKernel(n *lab.Node, dual bool) (kernelCounts, error) {
	k := kernelCounts{dual: dual}
	nl, err := n.Netlink()
	if err != nil {
		return k, err
	}
	defer nl.Close()
	if k.ipv4, err = countFamily(n, nl, false); err != nil || !dual {
		return k, err
	}
	k.ipv6, err = countFamily(n, nl, true)
	return k, err
}

// countFamily counts overlayd's routes of one family and the permanent
// neighbour and FDB entries of that family's vxlan device.
func countFamily(n *lab.Node, nl *netlink.Handle, v6 bool) (entryCounts, error) {
	var k entryCounts
	family, dev := netlink.FAMILY_V4, vxlanDevs[v6]
	if v6 {
		family = netlink.FAMILY_V6
	}
	routes, err := nl.RouteListFiltered(family, &netlink.Route{Protocol: kernel.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return k, fmt.Errorf("%s: listing routes (family %d): %w", n.Name, family, err)
	}
	k.routes = len(routes)
	link, err := linkOrNil(n, nl, dev)
	if link == nil {
		return k, err
	}
	k.neighs, k.fdb, err = countDevice(n, nl, link, family)
	return k, err
}

// linkOrNil is the node's link named dev; nil, and no error, when it does
// not exist.
func linkOrNil(n *lab.Node, nl *netlink.Handle, dev string) (netlink.Link, error) {
	link, err := nl.LinkByName(dev)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", n.Name, dev, err)
	}
	return link, nil
}

// countDevice counts the permanent neighbour entries of family and the
// permanent FDB entries of link.
func countDevice(n *lab.Node, nl *netlink.Handle, link netlink.Link, family int) (neighs, fdb int, err error) {
	dev := link.Attrs().Name
	for _, fam := range []int{family, unix.AF_BRIDGE} {
		entries, err := nl.NeighList(link.Attrs().Index, fam)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: listing neighbours of %s (family %d): %w", n.Name, dev, fam, err)
		}
		perm := 0
		for _, e := range entries {
			if e.LinkIndex == link.Attrs().Index && e.State&netlink.NUD_PERMANENT != 0 {
				perm++
			}
		}
		if fam == unix.AF_BRIDGE {
			fdb = perm
		} else {
			neighs = perm
		}
	}
	return neighs, fdb, nil
}

// countThrough counts the IPv4 routes through the device dev and its
// permanent neighbour and FDB entries, whichever agent wrote them (flanneld
// marks its routes with no protocol of its own).
func countThrough(n *lab.Node, dev string) (entryCounts, error) {
	var k entryCounts
	nl, err := n.Netlink()
	if err != nil {
		return k, err
	}
	defer nl.Close()
	link, err := linkOrNil(n, nl, dev)
	if link == nil {
		return k, err
	}
	routes, err := nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{LinkIndex: link.Attrs().Index}, netlink.RT_FILTER_OIF)
	if err != nil {
		return k, fmt.Errorf("%s: listing routes through %s: %w", n.Name, dev, err)
	}
	k.routes = len(routes)
	k.neighs, k.fdb, err = countDevice(n, nl, link, netlink.FAMILY_V4)
	return k, err
}

// deleteLink removes a link of the node if it exists; routes through it,
// its neighbour and FDB entries go with it.
func deleteLink(n *lab.Node, name string) error {
	nl, err := n.Netlink()
	if err != nil {
		return err
	}
	defer nl.Close()
	link, err := nl.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err == nil {
		err = nl.LinkDel(link)
	}
	if err != nil {
		return fmt.Errorf("%s: deleting %s: %w", n.Name, name, err)
	}
	return nil
}

// kernelWatch follows route and neighbour (including FDB) changes in a
// node, so the moment an entry appears or goes is seen to the millisecond
// without dumping thousands of entries in a loop.
type kernelWatch struct {
	// anyRouteProtocol: wait counts routes of any protocol, not only
	// overlayd's (flanneld marks its routes with none of its own).
	anyRouteProtocol bool

	routes chan netlink.RouteUpdate
	neighs chan netlink.NeighUpdate
	errs   chan error
	done   chan struct{}
}

func watchKernel(n *lab.Node) (*kernelWatch, error) {
	ns, err := netns.GetFromPath(n.Path())
	if err != nil {
		return nil, fmt.Errorf("opening namespace of %s: %w", n.Name, err)
	}
	defer ns.Close()
	w := &kernelWatch{
		routes: make(chan netlink.RouteUpdate, 4096),
		neighs: make(chan netlink.NeighUpdate, 4096),
		errs:   make(chan error, 4),
		done:   make(chan struct{}),
	}
	onErr := func(err error) {
		select {
		case w.errs <- err:
		default:
		}
	}
	if err := netlink.RouteSubscribeWithOptions(w.routes, w.done, netlink.RouteSubscribeOptions{
		Namespace: &ns, ErrorCallback: onErr, ReceiveBufferSize: 4 << 20,
	}); err != nil {
		return nil, fmt.Errorf("%s: subscribing to routes: %w", n.Name, err)
	}
	if err := netlink.NeighSubscribeWithOptions(w.neighs, w.done, netlink.NeighSubscribeOptions{
		Namespace: &ns, ErrorCallback: onErr, ReceiveBufferSize: 4 << 20,
	}); err != nil {
		close(w.done)
		return nil, fmt.Errorf("%s: subscribing to neighbours: %w", n.Name, err)
	}
	return w, nil
}

func (w *kernelWatch) close() { close(w.done) }

// familyEntries are the three entries a vxlan peer needs on a node in one
// family.
type familyEntries struct {
	subnet   netip.Prefix     // route to it
	vtep     netip.Addr       // neighbour entry: the peer's VTEP address
	vtepMAC  net.HardwareAddr // FDB entry: its MAC ...
	publicIP netip.Addr       // ... to its public address
}

// peerEntries are a peer's entries of each family it has: 3 for an IPv4
// peer, 6 for a dual-stack one.
type peerEntries []familyEntries

// keys names each entry as wait sees it in a netlink update.
func (p peerEntries) keys() map[string]bool {
	keys := map[string]bool{}
	for _, e := range p {
		keys[routeKey(e.subnet)] = true
		keys[neighKey(e.vtep)] = true
		keys[fdbKey(e.vtepMAC, e.publicIP)] = true
	}
	return keys
}

func routeKey(dst netip.Prefix) string { return "route to " + dst.String() }
func neighKey(ip netip.Addr) string    { return "neighbour " + ip.String() }
func fdbKey(mac net.HardwareAddr, dst netip.Addr) string {
	return "FDB entry " + mac.String() + " dst " + dst.String()
}

// addrOf is a netlink address as a netip.Addr, IPv4 unmapped.
func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// wait returns when all entries of p have appeared (present) or gone
// (!present), with the time the last of them did.
func (w *kernelWatch) wait(ctx context.Context, p peerEntries, present bool) (time.Time, error) {
	pending := p.keys()
	var last time.Time
	seen := func(key string) {
		if pending[key] {
			delete(pending, key)
			last = time.Now()
		}
	}
	for len(pending) > 0 {
		select {
		case <-ctx.Done():
			keys := slices.Sorted(maps.Keys(pending))
			return last, fmt.Errorf("peer %s: %d of %d entries have not %s (%s): %w", p[0].subnet, len(keys), len(p.keys()),
				map[bool]string{true: "appeared", false: "gone"}[present], strings.Join(keys, ", "), ctx.Err())
		case err := <-w.errs:
			return last, fmt.Errorf("netlink subscription: %w", err)
		case u := <-w.routes:
			added := u.Type == unix.RTM_NEWROUTE
			if added == present && (w.anyRouteProtocol || u.Protocol == kernel.RouteProtocol) && u.Dst != nil {
				ones, _ := u.Dst.Mask.Size()
				seen(routeKey(netip.PrefixFrom(addrOf(u.Dst.IP), ones)))
			}
		case u := <-w.neighs:
			added := u.Type == unix.RTM_NEWNEIGH
			if added != present {
				continue
			}
			switch u.Family {
			case unix.AF_BRIDGE:
				seen(fdbKey(u.HardwareAddr, addrOf(u.IP)))
			case netlink.FAMILY_V4, netlink.FAMILY_V6:
				seen(neighKey(addrOf(u.IP)))
			}
		}
	}
	return last, nil
}
