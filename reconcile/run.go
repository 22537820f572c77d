package reconcile

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/pkg/filewatch"
	"github.com/overlayd/overlayd/pkg/health"
	"github.com/overlayd/overlayd/subnet"
)

// Run acquires the lease, publishes this node's data, and runs the loop
// until ctx ends (nil) or a part of it fails (its error). Everything it
// starts runs on one derived context and has stopped when Run returns.
// Stopping leaves the datapath in place: a restart, or a rolling update of
// the DaemonSet, must not cut pods off.
func (l *Loop) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		err := l.cfg.Leases.Run(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			err = errors.New("stopped")
		}
		return fmt.Errorf("lease store: %w", err)
	})
	g.Go(func() error {
		<-ctx.Done()
		l.queue.ShutDown()
		return nil
	})
	g.Go(func() error { return l.run(ctx, g) })
	err := g.Wait()
	if err == nil {
		l.log.Info("stopping; the datapath stays in place")
	}
	return err
}

// run takes the lease, then starts the sources of "dirty" and runs passes
// until the queue shuts down.
func (l *Loop) run(ctx context.Context, g *errgroup.Group) error {
	c := l.cfg
	l.node = backend.Node{Name: c.NodeName, Network: c.Net.Network, IPv6Network: c.Net.IPv6Network, Underlay: c.Underlay}
	l.underlayIndex.Store(int64(c.Underlay.Iface.Index))

	// Waiting for a lease (e.g. for kube-controller-manager to assign a
	// podCIDR) is progress, not a hang: stay alive until the loop beats.
	starting, started := context.WithCancel(ctx)
	g.Go(func() error { l.beatUntil(starting); return nil })
	err := l.waitForFlanneld(ctx)
	if err == nil {
		err = l.adoptFlanneld()
	}
	if err == nil {
		err = l.acquire(ctx)
	}
	started()
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}

	// Everything that can change the desired or the actual state only
	// marks it dirty.
	g.Go(func() error {
		c.Kernel.Watch(ctx, func(idx int) bool { return int64(idx) == l.underlayIndex.Load() }, l.markFor("kernel"))
		return nil
	})
	g.Go(func() error { l.forward(ctx, c.Leases.Changed(), leasesSource); return nil })
	g.Go(func() error { l.tick(ctx, c.ResyncPeriod, l.markFor("timer"), "resync"); return nil })
	if c.Rules != nil {
		g.Go(func() error { l.tick(ctx, c.RulesResync, l.markFor(rulesSource), "due"); return nil })
	}
	if c.NetConfigPath != "" {
		g.Go(func() error {
			filewatch.Watch(ctx, c.NetConfigPath, c.NetConfig, c.ResyncPeriod, l.reloadChanged, l.log)
			return nil
		})
	}
	l.markFor("start")("lease acquired")
	for l.processOne(ctx) {
	}
	return nil
}

// acquire takes this node's lease with its backend data published on it,
// and writes subnet.env.
func (l *Loop) acquire(ctx context.Context) error {
	// What the own Node says about its public addresses decides what is
	// published, so it is read first (the lease store's first sync).
	addrs, err := l.nodeAddresses(ctx)
	if err != nil {
		return err
	}
	l.applyNodeAddresses(addrs)
	attrs, err := l.attrs()
	if err != nil {
		return err
	}
	l.log.Info("acquiring lease", zap.String("node", l.cfg.NodeName), zap.String("backend", attrs.BackendType),
		zap.Stringer("publicIP", attrs.PublicIP))
	lease, err := l.cfg.Leases.Acquire(ctx, attrs)
	if err != nil {
		return fmt.Errorf("acquiring lease: %w", err)
	}
	l.published = &attrs
	l.node.Lease = lease
	l.log.Info("lease acquired", zap.Stringer("subnet", lease.Subnet), zap.Stringer("ipv6Subnet", lease.IPv6Subnet))
	l.cfg.Status.Set(health.Lease, true, leaseDetail(lease))
	return l.writeSubnetFile()
}

// nodeAddresses waits for the lease store's first sync and returns the own
// Node's address annotations.
func (l *Loop) nodeAddresses(ctx context.Context) (subnet.NodeAddresses, error) {
	for {
		if a, synced := l.cfg.Leases.NodeAddresses(); synced {
			return a, nil
		}
		select {
		case <-l.cfg.Leases.Changed():
		case <-ctx.Done():
			return subnet.NodeAddresses{}, ctx.Err()
		}
	}
}

// beatUntil keeps the liveness heartbeat going until ctx ends.
func (l *Loop) beatUntil(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		l.cfg.Status.Beat()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// reloadChanged is the net-conf.json watch's callback.
func (l *Loop) reloadChanged(data []byte) {
	if err := l.Reload(data); err != nil {
		l.log.Error("refusing changed network configuration; the running one stays in force",
			zap.String("path", l.cfg.NetConfigPath), zap.Error(err))
		l.warn(EventConfigRefused, "refusing the changed %s (the running configuration stays in force): %v", l.cfg.NetConfigPath, err)
	}
}

// markFor returns what marks the state dirty for source. Every source but
// the lease store and the rules resync asks for a full pass; the rules
// resync asks for the traffic rules to be checked (changed.go).
func (l *Loop) markFor(source string) func(reason string) {
	return func(reason string) {
		l.log.Debug("state dirty", zap.String("source", source), zap.String("reason", reason))
		switch source {
		case leasesSource:
		case rulesSource:
			l.rulesDue.Store(true)
		default:
			l.full.Store(true)
		}
		l.queue.Add(syncKey)
	}
}

const (
	leasesSource = "leases"
	rulesSource  = "rules resync"
)

// markFull asks for a full pass.
func (l *Loop) markFull() {
	l.full.Store(true)
	l.queue.Add(syncKey)
}

func (l *Loop) forward(ctx context.Context, ch <-chan struct{}, source string) {
	mark := l.markFor(source)
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
			mark("changed")
		}
	}
}

func (l *Loop) tick(ctx context.Context, every time.Duration, mark func(reason string), reason string) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			mark(reason)
		}
	}
}
