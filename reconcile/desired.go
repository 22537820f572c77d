package reconcile

import (
	"fmt"
	"net/netip"
	"slices"

	"go.uber.org/zap"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/pkg/metrics"
	"github.com/overlayd/overlayd/pkg/rules"
	"github.com/overlayd/overlayd/subnet"
)

// desired is the whole desired state: what our own backend needs to receive,
// the receiving side of draining backends, and for each peer what reaching
// it with its published backend needs.
func (l *Loop) desired(peers []subnet.Lease) (backend.State, error) {
	var st backend.State
	st.Routes = make([]kernel.Route, 0, len(peers))
	if err := l.cfg.Backend.Local(l.node, &st); err != nil {
		return st, fmt.Errorf("backend %s: %w", l.cfg.Backend.Type(), err)
	}
	if l.cfg.BlackholeRoute {
		st.Routes = append(st.Routes, blackholeRoutes(l.node.Lease)...)
	}
	l.addDrains(&st)
	l.ownLinks = slices.Clone(st.Links)
	pass := l.peers.begin(len(peers))
	defer pass.end()
	for _, p := range peers {
		err := pass.add(l.node, p, &st)
		if _, skip := backend.IsSkip(err); err != nil && !skip {
			return st, fmt.Errorf("peer %s: %w", p.Node, err)
		}
		l.notePeer(p, err)
	}
	l.peers.forgetSkipsExcept(peers)
	l.senderRefs = nil
	if len(st.Datapaths) > 0 || len(st.IngressPorts) > 0 {
		st.Senders = senders(peers)
		l.senderRefs = newSenderRefs(peers)
	}
	slices.Sort(st.IngressPorts)
	return st, nil
}

// blackholeMetric keeps the blackhole for the own pod subnet behind the pod
// bridge's connected route of the same prefix (metric 0 for IPv4, 256 for
// IPv6): it only drops what no more specific route takes.
const blackholeMetric = 65535

// blackholeRoutes drop traffic to the unused addresses of the node's own pod
// subnets (--ip-blackhole-route) instead of sending it to the default
// gateway.
func blackholeRoutes(lease subnet.Lease) []kernel.Route {
	var out []kernel.Route
	for _, p := range []netip.Prefix{lease.Subnet, lease.IPv6Subnet} {
		if p.IsValid() {
			out = append(out, kernel.Route{Dst: p, Blackhole: true, Metric: blackholeMetric})
		}
	}
	return out
}

// senders are the addresses peers send from, both families, sorted,
// without duplicates: their public addresses, and the source addresses of
// those whose public address is an overwrite.
func senders(peers []subnet.Lease) []netip.Addr {
	out := make([]netip.Addr, 0, len(peers))
	for _, p := range peers {
		s := leaseSenders(p)
		out = append(out, s.list()...)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// notePeer notes whether p is reached: err is why it is skipped, or nil.
func (l *Loop) notePeer(p subnet.Lease, err error) {
	if s, ok := backend.IsSkip(err); ok {
		l.noteSkip(p, s)
		return
	}
	l.noteReachable(p)
}

// noteSkip logs a skipped peer once per distinct reason and counts it.
func (l *Loop) noteSkip(p subnet.Lease, s *backend.SkipError) {
	if !l.peers.skip(p.Node, s.Error()) {
		return
	}
	metrics.PeersSkipped.WithLabelValues(s.Reason).Inc()
	l.log.Warn("skipping peer", zap.String("peer", p.Node), zap.Stringer("subnet", p.Subnet),
		zap.String("backend", p.Attrs.BackendType), zap.String("reason", s.Reason), zap.Error(s.Err))
	l.warn(EventPeerSkipped, "peer %s (%s, backend %s) cannot be reached: %v", p.Node, p.Subnet, p.Attrs.BackendType, s)
}

// noteReachable logs a peer that was skipped and is reached again.
func (l *Loop) noteReachable(p subnet.Lease) {
	if l.peers.unskip(p.Node) {
		l.log.Info("peer reachable again", zap.String("peer", p.Node))
	}
}

// rulesConfig is the traffic rules this node needs: they follow the flags,
// the network and this node's lease.
func (l *Loop) rulesConfig(want backend.State) rules.Config {
	net, lease := l.cfg.Net, l.node.Lease
	cfg := rules.Config{IPMasq: l.cfg.IPMasq, ForwardRules: l.cfg.ForwardRules, NoRandomFully: l.cfg.MasqNoRandomFully,
		NFTables: net.EnableNFTables}
	if l.cfg.IngressFilter {
		cfg.Ingress = rules.Ingress{Ports: want.IngressPorts, Senders: want.Senders}
	}
	if net.EnableIPv4 {
		cfg.Network, cfg.Subnet = net.Network, lease.Subnet
	}
	if net.EnableIPv6 {
		cfg.IPv6Network, cfg.IPv6Subnet = net.IPv6Network, lease.IPv6Subnet
	}
	return cfg
}
