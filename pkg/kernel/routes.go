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
	"github.com/overlayd/overlayd/pkg/nlbatch"
)

// routeKey identifies a main-table route as the kernel does: by destination
// and priority (the metric).
type routeKey struct {
	dst      netip.Prefix
	priority int
}

// keyOf is the key of rt, a route to dst, with the priority the kernel
// gives it.
func keyOf(dst netip.Prefix, rt netlink.Route) routeKey {
	return routeKey{dst.Masked(), kernelPriority(rt)}
}

// ensureRoutes replaces every wanted route that is missing or differs, in
// place: traffic to a destination never finds it unrouted. It returns the
// removal of overlayd's routes that are not wanted.
func (r *Reconciler) ensureRoutes(want []Route, index devIndex, ch *Changes, fail func(error)) (ensured, error) {
	have, err := r.listRoutes()
	if err != nil {
		return ensured{}, err
	}
	keep := make(map[routeKey]counted[routeVal], len(want))
	var set []nlbatch.Change
	var haveByDst map[netip.Prefix][]routeKey // built at the first missing device
	for _, w := range want {
		idx := 0
		if !w.Blackhole {
			var err error
			if idx, err = index(w.Dev); err != nil {
				// Keep whatever routes to it we have: a device that is
				// missing for now does not unroute its destinations.
				if haveByDst == nil {
					haveByDst = map[netip.Prefix][]routeKey{}
					for k := range have {
						haveByDst[k.dst] = append(haveByDst[k.dst], k)
					}
				}
				for _, k := range haveByDst[w.Dst.Masked()] {
					keep[k] = counted[routeVal]{v: valOf(have[k]), refs: 1}
				}
				fail(fmt.Errorf("route %s: %w", w, err))
				continue
			}
		}
		rt := netlinkRoute(w, idx)
		key := keyOf(w.Dst, rt)
		val := valOf(rt)
		addWanted(keep, key, val)
		cur, exists := have[key]
		if exists && valOf(cur) == val {
			continue
		}
		set = append(set, r.routeSet(w, rt, exists, ch, fail))
	}
	// The model first: the events of these writes are its echo.
	r.mu.Lock()
	r.model.routes = keep
	r.mu.Unlock()
	// A route the batch could not set is tried again through replaceRoute,
	// which knows the one refusal that has a way around it.
	r.batch.Make(set)
	return ensured{wanted: len(keep), prune: func() { r.pruneRoutes(have, keep, ch, fail) }}, nil
}

// routeSet is the batch change setting w (rt in netlink's form), counted in ch.
func (r *Reconciler) routeSet(w Route, rt netlink.Route, exists bool, ch *Changes, fail func(error)) nlbatch.Change {
	return nlbatch.Change{Msg: routeReplaceRequest(&rt), Alone: func() error { return r.replaceRoute(&rt) }, Done: func(err error) {
		if err != nil {
			fail(fmt.Errorf("setting route %s: %w", w, err))
			return
		}
		if exists {
			r.log.Info("updated route", zap.Stringer("route", w))
		} else {
			r.log.Debug("added route", zap.Stringer("route", w))
		}
		countSet(ch, EntryRoute, exists)
	}}
}

// replaceRoute puts rt in place of the route to its destination. The
// kernel refuses an IPv6 onlink route whose gateway lies in its own
// destination (vxlan's: the peer's VTEP address is its subnet's first) while
// the route it replaces goes through another device: it checks the gateway
// against the table, finds that very route and reports "Nexthop has invalid
// gateway or device mismatch" (EINVAL). A host route to the gateway through
// rt's device, there only for the moment of the replace, satisfies the
// check, so the destination is never unrouted (as a delete and add would
// leave it). The host route is overlayd's, so a crash in between leaves
// nothing foreign behind: the next pass removes it.
func (r *Reconciler) replaceRoute(rt *netlink.Route) error {
	err := r.h.RouteReplace(rt)
	if !errors.Is(err, unix.EINVAL) || rt.Flags&int(netlink.FLAG_ONLINK) == 0 || rt.Gw == nil || rt.Gw.To4() != nil || !rt.Dst.Contains(rt.Gw) {
		return err
	}
	bits := 8 * len(rt.Gw)
	host := netlink.Route{LinkIndex: rt.LinkIndex, Dst: &net.IPNet{IP: rt.Gw, Mask: net.CIDRMask(bits, bits)},
		Protocol: RouteProtocol, Table: rt.Table, Scope: netlink.SCOPE_LINK, Type: unix.RTN_UNICAST}
	if herr := r.h.RouteAdd(&host); herr != nil {
		return err
	}
	err = r.h.RouteReplace(rt)
	if derr := r.h.RouteDel(&host); derr != nil && !errors.Is(derr, unix.ESRCH) {
		r.log.Warn("cannot remove the temporary route to a gateway", zap.Stringer("dst", host.Dst), zap.Error(derr))
	}
	return err
}

// listRoutes returns overlayd's routes (by protocol) in the main table.
func (r *Reconciler) listRoutes() (map[routeKey]netlink.Route, error) {
	out := map[routeKey]netlink.Route{}
	err := r.routes.RouteListFilteredIter(netlink.FAMILY_ALL, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL,
		func(rt netlink.Route) bool {
			if dst, ok := ip.PrefixFromIPNet(rt.Dst); ok {
				out[keyOf(dst, rt)] = rt
			}
			return true
		})
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	return out, nil
}

// netlinkRoute is the main-table route for w through the device ifindex
// (none for a blackhole).
func netlinkRoute(w Route, ifindex int) netlink.Route {
	rt := netlink.Route{
		LinkIndex: ifindex,
		Dst:       ip.IPNet(w.Dst.Masked()),
		Protocol:  RouteProtocol,
		Table:     unix.RT_TABLE_MAIN,
		Scope:     netlink.SCOPE_UNIVERSE,
		Type:      unix.RTN_UNICAST,
		Priority:  w.Metric,
	}
	if w.Blackhole {
		rt.LinkIndex, rt.Type = 0, unix.RTN_BLACKHOLE
		return rt
	}
	if w.Gw.IsValid() {
		rt.Gw = w.Gw.AsSlice()
		if rt.Priority == 0 && w.Dst.Addr().Is4() {
			rt.Priority = spreadMetric(w.Dst)
		}
	} else {
		rt.Scope = netlink.SCOPE_LINK
	}
	if w.OnLink {
		rt.Flags = int(netlink.FLAG_ONLINK)
	}
	return rt
}

// spreadMetrics is how many metrics IPv4 routes through a gateway are
// spread over (see spreadMetric).
const spreadMetrics = 1024

// spreadMetric is the metric of the IPv4 route to dst through a gateway
// when none is asked for: dst's subnet number modulo spreadMetrics. The
// kernel shares one fib_info among routes with the same next hop and, to
// find it, hashes a new route's protocol, scope, source, metric and device
// but not its gateway; every peer's route, through one device with a
// gateway of its own, lands in one hash chain that each insert walks, so
// programming n peers costs O(n²) (5000 routes: 0.6–0.8 s of kernel time,
// against 0.1 s for 5000 IPv6 routes, whose table has no such lookup). A
// metric per subnet spreads them over spreadMetrics chains. Metrics only
// order routes to the same destination, and each pod subnet has one route
// of ours, so forwarding is unchanged; the metric is fixed by the subnet,
// so every agent (a surge upgrade runs two) wants the same route.
func spreadMetric(dst netip.Prefix) int {
	a := dst.Masked().Addr().As4()
	n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	if dst.Bits() > 0 {
		n >>= 32 - dst.Bits()
	}
	return int(n % spreadMetrics)
}

// kernelPriority is the priority the kernel gives want: IPv6 routes without
// one get 1024.
func kernelPriority(want netlink.Route) int {
	if want.Priority == 0 && want.Dst != nil && want.Dst.IP.To4() == nil {
		return 1024
	}
	return want.Priority
}

// pruneRoutes deletes the routes of have that are not kept.
func (r *Reconciler) pruneRoutes(have map[routeKey]netlink.Route, keep map[routeKey]counted[routeVal], ch *Changes, fail func(error)) {
	for key, rt := range have {
		if _, ok := keep[key]; !ok {
			r.deleteRoute(rt, ch, fail)
		}
	}
}

func (r *Reconciler) deleteRoute(rt netlink.Route, ch *Changes, fail func(error)) {
	if err := r.h.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
		fail(fmt.Errorf("deleting route %s: %w", rt.Dst, err))
		return
	}
	r.log.Info("removed route", zap.Stringer("dst", rt.Dst), zap.Stringer("gw", rt.Gw))
	ch.Deleted[EntryRoute]++
}
