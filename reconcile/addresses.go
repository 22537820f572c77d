package reconcile

import (
	"reflect"

	"go.uber.org/zap"

	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/subnet"
)

// applyNodeAddresses puts the own Node's address annotations in force, as
// flanneld reads them, but also when they change while running (flanneld
// reads them only at start). node-public-ip(v6) stands in for
// --public-ip(v6): the interface is chosen again with it. A choice that
// fails (no interface holds the address, and no interface flag is given)
// keeps the interface in use, saying why. public-ip-overwrite(v6) only
// changes what peers are told (attrs), which the pass publishes.
func (l *Loop) applyNodeAddresses(a subnet.NodeAddresses) {
	old := l.addrs
	l.addrs = a
	if a.Overwrite != old.Overwrite || a.OverwriteV6 != old.OverwriteV6 {
		l.log.Info("public address overwrite from the Node's annotations", zap.Stringer("overwrite", a.Overwrite), zap.Stringer("overwriteV6", a.OverwriteV6))
	}
	if a.NodePublicIP == old.NodePublicIP && a.NodePublicIPv6 == old.NodePublicIPv6 {
		return
	}
	opts := l.cfg.UnderlayOptions
	if a.NodePublicIP.IsValid() {
		opts.PublicIP = a.NodePublicIP.String()
	}
	if a.NodePublicIPv6.IsValid() {
		opts.PublicIPv6 = a.NodePublicIPv6.String()
	}
	if l.cfg.Host == nil {
		return // no way to look again (tests of the desired state)
	}
	ext, err := ip.SelectExternal(opts, l.cfg.Host)
	if err != nil {
		l.log.Error("the Node's node-public-ip annotations cannot be used; keeping the interface in use", zap.Error(err),
			zap.String("iface", l.node.Underlay.Iface.Name))
		l.warn(EventPublicAddress, "node-public-ip annotations cannot be used, keeping interface %s: %v", l.node.Underlay.Iface.Name, err)
		return
	}
	if reflect.DeepEqual(ext, l.node.Underlay) {
		return
	}
	l.log.Info("external interface chosen again for the Node's node-public-ip annotations", zap.String("iface", ext.Iface.Name),
		zap.Stringer("addr", ext.Addr), zap.Stringer("publicIP", ext.PublicIP))
	l.normal(EventPublicAddress, "external interface %s, address %s, public IP %s (node-public-ip annotations)", ext.Iface.Name, ext.Addr, ext.PublicIP)
	mtu := l.cfg.Backend.MTU(l.node)
	l.node.Underlay = ext
	l.underlayIndex.Store(int64(ext.Iface.Index))
	l.peers.forget() // reaching a peer depends on the underlay
	if l.node.Lease.Subnet.IsValid() || l.node.Lease.IPv6Subnet.IsValid() {
		if l.cfg.Backend.MTU(l.node) != mtu {
			if err := l.writeSubnetFile(); err != nil {
				l.log.Error("rewriting subnet file", zap.Error(err))
			}
		}
	}
}
