package reconcile

import (
	"context"
	"fmt"
	"reflect"
	"time"

	"go.uber.org/zap"

	"github.com/overlayd/overlayd/subnet"
)

// publishTimeout bounds one write of this node's attributes.
const publishTimeout = 30 * time.Second

// attrs is what this node publishes on its lease. Its public addresses are,
// first to last, as flanneld: the public-ip-overwrite annotations, the
// node-public-ip annotations, --public-ip(v6), the interface's address.
func (l *Loop) attrs() (subnet.LeaseAttrs, error) {
	a := subnet.LeaseAttrs{BackendType: l.cfg.Backend.Type()}
	for _, f := range l.node.Families() {
		data, err := l.cfg.Backend.Data(l.node, f)
		if err != nil {
			return subnet.LeaseAttrs{}, fmt.Errorf("%s backend data: %w", f, err)
		}
		if f.Is6() {
			a.BackendV6Data = data
			a.PublicIPv6 = l.node.Underlay.PublicIPv6
			if l.addrs.OverwriteV6.IsValid() {
				a.PublicIPv6, a.SourceIPv6 = l.addrs.OverwriteV6, l.node.Underlay.Addr6
			}
		} else {
			a.BackendData = data
			a.PublicIP = l.node.Underlay.PublicIP
			if l.addrs.Overwrite.IsValid() {
				// Peers send to the overwrite; this node still sends from
				// its interface, which their ingress filters must admit.
				a.PublicIP, a.SourceIP = l.addrs.Overwrite, l.node.Underlay.Addr
			}
		}
	}
	return a, nil
}

// publish updates this node's published attributes when they changed (a
// new backend), and starts the drain clock of the backends it replaced.
func (l *Loop) publish(ctx context.Context) error {
	attrs, err := l.attrs()
	if err != nil {
		return err
	}
	if l.published != nil && reflect.DeepEqual(*l.published, attrs) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	if err := l.cfg.Leases.Publish(ctx, attrs); err != nil {
		return fmt.Errorf("publishing %s backend data: %w", attrs.BackendType, err)
	}
	l.log.Info("published backend", zap.String("backend", attrs.BackendType), zap.ByteString("data", attrs.BackendData))
	l.published = &attrs
	l.drainsPublished(time.Now())
	return nil
}

// writeSubnetFile writes subnet.env for the CNI plugin.
func (l *Loop) writeSubnetFile() error {
	c := l.cfg
	mtu := c.Backend.MTU(l.node)
	if err := subnet.WriteEnv(c.SubnetFile, c.Net, l.node.Lease, mtu, c.IPMasq); err != nil {
		return fmt.Errorf("writing subnet file: %w", err)
	}
	l.log.Info("wrote subnet file", zap.String("path", c.SubnetFile), zap.Int("mtu", mtu))
	return nil
}

func leaseDetail(lease subnet.Lease) string {
	if lease.IPv6Subnet.IsValid() {
		return lease.Subnet.String() + " " + lease.IPv6Subnet.String()
	}
	return lease.Subnet.String()
}
