package kernel

import (
	"context"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// subscriptionBuffer is the netlink socket receive buffer for event
// subscriptions: large, because a burst (a link going down takes its routes
// with it) must not overflow it. An overflow is survived anyway: the
// subscription is renewed and a full reconcile requested.
const subscriptionBuffer = 4 << 20

// Watch calls notify whenever the kernel reports a change that may concern
// overlayd's state: a change to one of its links, a route with its protocol,
// a permanent neighbour or FDB entry on its links (or a wanted one deleted
// or replaced), or anything about a link for which watched(ifindex) is true
// (the underlay). An event that leaves a route, neighbour or FDB entry as
// the last Apply wanted it (the echo of overlayd's own writes) needs no
// pass and is not reported. The events only say "look again"; the
// reconcile that follows decides what to do. Watch resubscribes after an
// error, notifying then too since events may have been lost, and returns
// when ctx ends.
func (r *Reconciler) Watch(ctx context.Context, watched func(ifindex int) bool, notify func(reason string)) {
	relevant := func(ifindex int) bool { return r.OwnedIndex(ifindex) || watched(ifindex) }
	for {
		if err := r.watchOnce(ctx, relevant, notify); err != nil {
			r.log.Warn("netlink event subscription failed; resubscribing", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
		notify("netlink resubscribed")
	}
}

func (r *Reconciler) watchOnce(ctx context.Context, relevant func(int) bool, notify func(string)) error {
	done := make(chan struct{})
	defer close(done)
	errc := make(chan error, 4)
	onErr := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	links := make(chan netlink.LinkUpdate, 64)
	routes := make(chan netlink.RouteUpdate, 256)
	neighs := make(chan netlink.NeighUpdate, 256)
	addrs := make(chan netlink.AddrUpdate, 64)
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{
		Namespace: &r.ns, ErrorCallback: onErr, ReceiveBufferSize: subscriptionBuffer}); err != nil {
		return err
	}
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{
		Namespace: &r.ns, ErrorCallback: onErr, ReceiveBufferSize: subscriptionBuffer}); err != nil {
		return err
	}
	if err := netlink.NeighSubscribeWithOptions(neighs, done, netlink.NeighSubscribeOptions{
		Namespace: &r.ns, ErrorCallback: onErr, ReceiveBufferSize: subscriptionBuffer}); err != nil {
		return err
	}
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{
		Namespace: &r.ns, ErrorCallback: onErr, ReceiveBufferSize: subscriptionBuffer}); err != nil {
		return err
	}
	watched, err := seedWatchedLinks(r.ns, func(idx int) bool { return relevant(idx) && !r.OwnedIndex(idx) })
	if err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return err
		case u, ok := <-links:
			if !ok {
				return errClosed
			}
			if idx := int(u.Index); r.OwnedIndex(idx) || relevant(idx) && watched.changed(u) {
				notify("link " + u.Attrs().Name + " changed")
			}
		case u, ok := <-routes:
			if !ok {
				return errClosed
			}
			if u.Protocol == RouteProtocol && !r.routeEventExpected(u) || u.Protocol != RouteProtocol && u.Type == unix.RTM_DELROUTE && relevant(u.LinkIndex) {
				notify(fmt.Sprintf("route to %v changed", u.Dst))
			}
		case u, ok := <-neighs:
			if !ok {
				return errClosed
			}
			if r.OwnedIndex(u.LinkIndex) && !r.neighEventExpected(u) {
				notify(neighChanged(u))
			}
		case u, ok := <-addrs:
			if !ok {
				return errClosed
			}
			if relevant(u.LinkIndex) {
				notify("address changed")
			}
		}
	}
}

// neighChanged names the neighbour or FDB entry of u, for the log.
func neighChanged(u netlink.NeighUpdate) string {
	if u.Family == unix.AF_BRIDGE {
		return fmt.Sprintf("FDB entry %s dst %s changed", u.HardwareAddr, u.IP)
	}
	return fmt.Sprintf("neighbour %s changed", u.IP)
}

type watchError string

func (e watchError) Error() string { return string(e) }

const errClosed = watchError("netlink subscription closed")
