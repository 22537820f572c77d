package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/test/lab"
)

// vxlanDev is the device of the vxlan backend with the default VNI and port.
const vxlanDev = "overlay.1"

// kernelCounts are the entries overlayd owns on a node: its routes (by
// protocol), and the permanent neighbour and FDB entries of its vxlan device.
type kernelCounts struct{ routes, neighs, fdb int }

func (k kernelCounts) String() string {
	return fmt.Sprintf("%d routes, %d neighbours, %d FDB entries", k.routes, k.neighs, k.fdb)
}

// countKernel counts what overlayd has programmed on the node, with
// netlink dumps (cheaper than `ip -j` for thousands of entries).
func countKernel(n *lab.Node) (kernelCounts, error) {
	var k kernelCounts
	nl, err := n.Netlink()
	if err != nil {
		return k, err
	}
	defer nl.Close()
	routes, err := nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: kernel.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return k, fmt.Errorf("%s: listing routes: %w", n.Name, err)
	}
	k.routes = len(routes)
	link, err := nl.LinkByName(vxlanDev)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return k, nil
	}
	if err != nil {
		return k, fmt.Errorf("%s: %s: %w", n.Name, vxlanDev, err)
	}
	for _, fam := range []int{netlink.FAMILY_V4, unix.AF_BRIDGE} {
		entries, err := nl.NeighList(link.Attrs().Index, fam)
		if err != nil {
			return k, fmt.Errorf("%s: listing neighbours (family %d): %w", n.Name, fam, err)
		}
		perm := 0
		for _, e := range entries {
			if e.LinkIndex == link.Attrs().Index && e.State&netlink.NUD_PERMANENT != 0 {
				perm++
			}
		}
		if fam == unix.AF_BRIDGE {
			k.fdb = perm
		} else {
			k.neighs = perm
		}
	}
	return k, nil
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

// peerEntries are the three entries a vxlan peer needs on a node.
type peerEntries struct {
	subnet   netip.Prefix     // route to it
	vtep     netip.Addr       // neighbour entry: the peer's VTEP address
	vtepMAC  net.HardwareAddr // FDB entry: its MAC ...
	publicIP netip.Addr       // ... to its public address
}

// wait returns when all three entries of p have appeared (present) or gone
// (!present), with the time the last of them did.
func (w *kernelWatch) wait(ctx context.Context, p peerEntries, present bool) (time.Time, error) {
	var route, neigh, fdb bool
	var last time.Time
	for !(route && neigh && fdb) {
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("peer %s: route %v, neighbour %v, FDB entry %v %s: %w",
				p.subnet, route, neigh, fdb, map[bool]string{true: "appeared", false: "went"}[present], ctx.Err())
		case err := <-w.errs:
			return last, fmt.Errorf("netlink subscription: %w", err)
		case u := <-w.routes:
			added := u.Type == unix.RTM_NEWROUTE
			if added == present && u.Protocol == kernel.RouteProtocol && u.Dst != nil && u.Dst.String() == p.subnet.String() {
				route, last = true, time.Now()
			}
		case u := <-w.neighs:
			added := u.Type == unix.RTM_NEWNEIGH
			if added != present {
				continue
			}
			switch {
			case u.Family == unix.AF_BRIDGE && u.HardwareAddr.String() == p.vtepMAC.String() && u.IP.Equal(net.IP(p.publicIP.AsSlice())):
				fdb, last = true, time.Now()
			case u.Family == netlink.FAMILY_V4 && u.IP.Equal(net.IP(p.vtep.AsSlice())):
				neigh, last = true, time.Now()
			}
		}
	}
	return last, nil
}
