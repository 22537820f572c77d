// Package daemon is overlayd's one loop. Lease changes, kernel events,
// configuration changes and timers all only mark the state dirty; the loop
// then computes the whole desired state from the current snapshot and makes
// the kernel match it. Repair, restart, stale-entry cleanup and backend
// switching are all that same code path.
package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/util/workqueue"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/pkg/filewatch"
	"github.com/overlayd/overlayd/pkg/health"
	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/subnet"
)

// Kernel applies a desired kernel state and reports kernel events.
type Kernel interface {
	Apply(want kernel.State) (kernel.Changes, kernel.Counts, error)
	ApplyLinks(want []kernel.Link) (kernel.Changes, error)
	Watch(ctx context.Context, watched func(ifindex int) bool, notify func(reason string))
	RxPackets(link string) (uint64, error)
}

// Datapath runs the userspace udp datapath; Ensure(nil) stops it.
type Datapath interface {
	Ensure(t *backend.UDPTunnel) error
}

// Rules keeps the traffic (iptables) rules for the node's lease in place.
type Rules interface {
	Ensure(net *netconf.Config, lease subnet.Lease) error
}

// Events records what an operator should see on the Node (Kubernetes
// Events); nil records nothing.
type Events interface {
	Normal(reason, format string, args ...any)
	Warning(reason, format string, args ...any)
}

// Event reasons.
const (
	EventConfigApplied  = "NetConfApplied"
	EventConfigRefused  = "NetConfRefused"
	EventDatapathFailed = "DatapathFailed"
	EventPeerSkipped    = "PeerUnreachable"
)

// Config is everything the loop needs; the caller wires real parts in.
type Config struct {
	NodeName string
	Net      *netconf.Config
	Backend  backend.Backend
	Leases   subnet.Manager
	Underlay *ip.External

	Kernel   Kernel
	Datapath Datapath // may be nil when no udp backend can ever be used
	Rules    Rules    // nil: no traffic rules

	NetConfigPath string // watched for changes when not empty
	NetConfig     []byte // its content at start

	SubnetFile   string
	IPMasq       bool
	ResyncPeriod time.Duration // kernel state checked at least this often
	RulesResync  time.Duration // iptables checked at least this often

	Status *health.Status
	Events Events
	Log    *zap.Logger
}

// Daemon is a running loop.
type Daemon struct {
	cfg   Config
	log   *zap.Logger
	queue workqueue.TypedRateLimitingInterface[string]

	node     backend.Node
	backends map[string]backend.Backend // by type: our own, and defaults for peers of other types

	skipped   map[string]string // peer -> why it is skipped, to log each change once
	lastState *backend.State    // last successfully applied desired state
	published *subnet.LeaseAttrs

	peerCache map[peerKey]peerResult // per peer, for the current backends
	nextCache map[peerKey]peerResult // filled during a pass

	// startNet is the configuration the daemon started with. What cannot
	// change live is the same in every configuration accepted since, so
	// Reload compares with it without touching the loop's state.
	startNet *netconf.Config
	pending  atomic.Pointer[pendingConfig] // offered by Reload, taken by the loop
	ownRaw   json.RawMessage               // the Backend object in force
	drains   []*drain
}

// syncKey is the queue's only item: there is one state, and it is dirty or not.
const syncKey = "sync"

// New prepares a daemon; Run starts it.
func New(cfg Config) *Daemon {
	limiter := workqueue.NewTypedItemExponentialFailureRateLimiter[string](50*time.Millisecond, 5*time.Second)
	return &Daemon{
		cfg:      cfg,
		log:      cfg.Log,
		queue:    workqueue.NewTypedRateLimitingQueueWithConfig(limiter, workqueue.TypedRateLimitingQueueConfig[string]{Name: "overlayd"}),
		backends: map[string]backend.Backend{cfg.Backend.Type(): cfg.Backend},
		skipped:  map[string]string{},
		ownRaw:   cfg.Net.Backend,
		startNet: cfg.Net,
	}
}

// Run acquires the lease, publishes this node's data, and runs the loop until
// ctx ends. Stopping leaves the datapath in place: a restart, or a rolling
// update of the DaemonSet, must not cut pods off.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.queue.ShutDown()
	c := d.cfg
	d.node = backend.Node{Name: c.NodeName, Network: c.Net.Network, IPv6Network: c.Net.IPv6Network, Underlay: c.Underlay}

	leaseErr := make(chan error, 1)
	go func() { leaseErr <- c.Leases.Run(ctx) }()

	// Waiting for a lease (e.g. for kube-controller-manager to assign a
	// podCIDR) is progress, not a hang: stay alive until the loop beats.
	starting := make(chan struct{})
	go d.beatUntil(ctx, starting)

	attrs, err := d.attrs()
	if err != nil {
		return err
	}
	d.log.Info("acquiring lease", zap.String("node", c.NodeName), zap.String("backend", attrs.BackendType),
		zap.Stringer("publicIP", attrs.PublicIP))
	lease, err := c.Leases.Acquire(ctx, attrs)
	if err != nil {
		return fmt.Errorf("acquiring lease: %w", err)
	}
	d.published = &attrs
	d.node.Lease = lease
	d.log.Info("lease acquired", zap.Stringer("subnet", lease.Subnet), zap.Stringer("ipv6Subnet", lease.IPv6Subnet))
	c.Status.Set(health.Lease, true, leaseDetail(lease))

	if err := d.writeSubnetFile(); err != nil {
		return err
	}

	// Everything that can change the desired or the actual state only
	// marks it dirty.
	underlayIndex := c.Underlay.Iface.Index
	go c.Kernel.Watch(ctx, func(idx int) bool { return idx == underlayIndex }, d.markFor("kernel"))
	go d.forward(ctx, c.Leases.Changed(), "leases")
	go d.tick(ctx, c.ResyncPeriod, "resync")
	if c.Rules != nil {
		go d.tick(ctx, c.RulesResync, "rules resync")
	}
	if c.NetConfigPath != "" {
		go filewatch.Watch(ctx, c.NetConfigPath, c.NetConfig, c.ResyncPeriod, func(data []byte) {
			if err := d.Reload(data); err != nil {
				d.log.Error("refusing changed network configuration; the running one stays in force",
					zap.String("path", c.NetConfigPath), zap.Error(err))
				d.warn(EventConfigRefused, "refusing the changed %s (the running configuration stays in force): %v", c.NetConfigPath, err)
			}
		}, d.log)
	}
	d.queue.Add(syncKey)

	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		for d.processOne() {
		}
	}()
	close(starting)
	select {
	case <-ctx.Done():
		d.queue.ShutDown()
		<-loopDone
		d.log.Info("stopping; the datapath stays in place")
		return nil
	case err := <-leaseErr:
		d.queue.ShutDown()
		<-loopDone
		if err == nil {
			err = errors.New("lease store stopped")
		}
		return fmt.Errorf("lease store: %w", err)
	}
}

// beatUntil keeps the liveness heartbeat going while the daemon starts.
func (d *Daemon) beatUntil(ctx context.Context, started <-chan struct{}) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		d.cfg.Status.Beat()
		select {
		case <-ctx.Done():
			return
		case <-started:
			return
		case <-t.C:
		}
	}
}

// writeSubnetFile writes subnet.env for the CNI plugin.
func (d *Daemon) writeSubnetFile() error {
	c := d.cfg
	mtu := c.Backend.MTU(d.node)
	if err := subnet.WriteEnv(c.SubnetFile, c.Net, d.node.Lease, mtu, c.IPMasq); err != nil {
		return fmt.Errorf("writing subnet file: %w", err)
	}
	d.log.Info("wrote subnet file", zap.String("path", c.SubnetFile), zap.Int("mtu", mtu))
	return nil
}

func leaseDetail(l subnet.Lease) string {
	if l.IPv6Subnet.IsValid() {
		return l.Subnet.String() + " " + l.IPv6Subnet.String()
	}
	return l.Subnet.String()
}

// attrs is what this node publishes on its lease.
func (d *Daemon) attrs() (subnet.LeaseAttrs, error) {
	data, err := d.cfg.Backend.Data(d.node)
	if err != nil {
		return subnet.LeaseAttrs{}, fmt.Errorf("backend data: %w", err)
	}
	return subnet.LeaseAttrs{
		PublicIP:    d.cfg.Underlay.PublicIP,
		PublicIPv6:  d.cfg.Underlay.PublicIPv6,
		BackendType: d.cfg.Backend.Type(),
		BackendData: data,
	}, nil
}

func (d *Daemon) markFor(source string) func(reason string) {
	return func(reason string) {
		d.log.Debug("state dirty", zap.String("source", source), zap.String("reason", reason))
		d.queue.Add(syncKey)
	}
}

func (d *Daemon) forward(ctx context.Context, ch <-chan struct{}, source string) {
	mark := d.markFor(source)
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
			mark("changed")
		}
	}
}

func (d *Daemon) tick(ctx context.Context, every time.Duration, reason string) {
	t := time.NewTicker(every)
	defer t.Stop()
	mark := d.markFor("timer")
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			mark(reason)
		}
	}
}

// processOne runs one reconcile; false when the queue is shut down.
func (d *Daemon) processOne() bool {
	key, shutdown := d.queue.Get()
	if shutdown {
		return false
	}
	defer d.queue.Done(key)
	d.cfg.Status.Beat()
	start := time.Now()
	err := d.reconcile()
	reconcileDuration.Observe(time.Since(start).Seconds())
	reconcileRuns.Inc()
	if err != nil {
		reconcileErrors.Inc()
		retries := d.queue.NumRequeues(key)
		level := d.log.Info
		if retries >= 3 {
			level = d.log.Warn
		}
		level("reconcile failed; retrying", zap.Error(err), zap.Int("retries", retries))
		if retries == 3 {
			d.warn(EventDatapathFailed, "programming the datapath keeps failing (retrying with backoff): %v", err)
		}
		d.queue.AddRateLimited(key)
		return true
	}
	d.queue.Forget(key)
	return true
}

// reconcile computes the whole desired state and makes the node match it.
func (d *Daemon) reconcile() error {
	peers, synced := d.cfg.Leases.Peers()
	if !synced {
		// A partial snapshot would look like departed peers: wait for the
		// full one (its arrival marks the state dirty again).
		return nil
	}
	d.applyPending()
	want, err := d.desired(peers)
	if err != nil {
		d.cfg.Status.Set(health.Datapath, false, err.Error())
		return err
	}

	var errs []error
	var linkChanges kernel.Changes
	// A userspace datapath attaches to its device before routes point into
	// it, and lets go of it only after they have moved elsewhere.
	if want.UDP != nil && d.cfg.Datapath != nil {
		var err error
		if linkChanges, err = d.cfg.Kernel.ApplyLinks(want.Links); err != nil {
			errs = append(errs, fmt.Errorf("kernel: %w", err))
		} else if err := d.cfg.Datapath.Ensure(want.UDP); err != nil {
			errs = append(errs, fmt.Errorf("udp datapath: %w", err))
		}
	}
	changes, counts, applyErr := d.cfg.Kernel.Apply(want.State)
	changes.Add(linkChanges)
	for kind, n := range counts {
		kernelEntries.WithLabelValues(kind).Set(float64(n))
	}
	if changes.Total() > 0 && d.lastState != nil && reflect.DeepEqual(*d.lastState, want) {
		// Nothing we wanted changed, yet the kernel had to: repairs.
		for kind, n := range changes.Created {
			repairs.WithLabelValues(kind).Add(float64(n))
		}
		for kind, n := range changes.Updated {
			repairs.WithLabelValues(kind).Add(float64(n))
		}
		if changes.Total() > 0 {
			d.log.Info("repaired kernel state", zap.Any("created", changes.Created), zap.Any("updated", changes.Updated))
		}
	}
	if applyErr != nil {
		errs = append(errs, fmt.Errorf("kernel: %w", applyErr))
	}
	if want.UDP == nil && d.cfg.Datapath != nil {
		if err := d.cfg.Datapath.Ensure(nil); err != nil {
			errs = append(errs, fmt.Errorf("udp datapath: %w", err))
		}
	}
	if len(errs) == 0 {
		d.lastState = &want
		d.cfg.Status.Set(health.Datapath, true, fmt.Sprintf("%d peers", len(peers)))
		// Publish only what this node is now able to receive.
		if err := d.publish(); err != nil {
			errs = append(errs, err)
		}
		d.checkDrains()
	} else {
		d.cfg.Status.Set(health.Datapath, false, errors.Join(errs...).Error())
	}

	if d.cfg.Rules != nil {
		if err := d.cfg.Rules.Ensure(d.cfg.Net, d.node.Lease); err != nil {
			errs = append(errs, fmt.Errorf("iptables: %w", err))
			d.cfg.Status.Set(health.Rules, false, err.Error())
		} else {
			d.cfg.Status.Set(health.Rules, true, "")
		}
	}
	return errors.Join(errs...)
}

// desired is the whole desired state: what our own backend needs to receive,
// and for each peer what reaching it with its published backend needs.
func (d *Daemon) desired(peers []subnet.Lease) (backend.State, error) {
	var st backend.State
	st.Routes = make([]kernel.Route, 0, len(peers))
	if err := d.cfg.Backend.Local(d.node, &st); err != nil {
		return st, fmt.Errorf("backend %s: %w", d.cfg.Backend.Type(), err)
	}
	// Peers that did not change keep what was computed for them, so a pass
	// over thousands of peers does not parse thousands of backend data.
	d.nextCache = make(map[peerKey]peerResult, len(peers))
	defer func() { d.peerCache, d.nextCache = d.nextCache, nil }()
	d.addDrains(&st)
	seen := make(map[string]bool, len(peers))
	for _, p := range peers {
		seen[p.Node] = true
		err := d.addPeer(p, &st)
		if s, ok := backend.IsSkip(err); ok {
			d.noteSkip(p, s)
			continue
		}
		if err != nil {
			return st, fmt.Errorf("peer %s: %w", p.Node, err)
		}
		if _, was := d.skipped[p.Node]; was {
			d.log.Info("peer reachable again", zap.String("peer", p.Node))
			delete(d.skipped, p.Node)
		}
	}
	for name := range d.skipped {
		if !seen[name] {
			delete(d.skipped, name)
		}
	}
	if st.UDP != nil {
		st.UDP.Sources = peerAddrs(peers)
	}
	return st, nil
}

// peerAddrs are the peers' public IPv4 addresses, sorted, without duplicates.
func peerAddrs(peers []subnet.Lease) []netip.Addr {
	out := make([]netip.Addr, 0, len(peers))
	for _, p := range peers {
		if p.Attrs.PublicIP.IsValid() {
			out = append(out, p.Attrs.PublicIP)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// addPeer adds what reaching p needs, computed on its own so that a peer
// that is skipped leaves nothing half-added.
func (d *Daemon) addPeer(p subnet.Lease, st *backend.State) error {
	if !p.Subnet.IsValid() || !p.Attrs.PublicIP.IsValid() {
		return backend.Skip(backend.SkipBadBackendData, "lease has no IPv4 subnet or public IP")
	}
	b, err := d.backendFor(p.Attrs.BackendType)
	if err != nil {
		return backend.Skip(backend.SkipUnknownBackend, "%v", err)
	}
	key := peerKey{node: p.Node, subnet: p.Subnet, publicIP: p.Attrs.PublicIP, backendType: p.Attrs.BackendType, data: string(p.Attrs.BackendData)}
	res, ok := d.peerCache[key]
	if !ok {
		res.err = b.Peer(d.node, p, &res.state)
	}
	d.nextCache[key] = res
	if res.err != nil {
		return res.err
	}
	return st.Merge(res.state)
}

// peerKey is everything a peer's desired state depends on, besides this
// node's own configuration (a change of which empties the cache).
type peerKey struct {
	node, backendType, data string
	subnet                  netip.Prefix
	publicIP                netip.Addr
}

// peerResult is what a backend made of a peer: its state, or why it is skipped.
type peerResult struct {
	state backend.State
	err   error
}

// backendFor returns the backend that reaches peers publishing typ: our own
// when it is our type, else that type with default options.
func (d *Daemon) backendFor(typ string) (backend.Backend, error) {
	if b, ok := d.backends[typ]; ok {
		return b, nil
	}
	b, err := backend.New(typ, nil)
	if err != nil {
		return nil, err
	}
	d.backends[typ] = b
	return b, nil
}

// noteSkip logs a skipped peer once per distinct reason and counts it.
func (d *Daemon) noteSkip(p subnet.Lease, s *backend.SkipError) {
	msg := s.Error()
	if d.skipped[p.Node] == msg {
		return
	}
	d.skipped[p.Node] = msg
	peersSkipped.WithLabelValues(s.Reason).Inc()
	d.log.Warn("skipping peer", zap.String("peer", p.Node), zap.Stringer("subnet", p.Subnet),
		zap.String("backend", p.Attrs.BackendType), zap.String("reason", s.Reason), zap.Error(s.Err))
	d.warn(EventPeerSkipped, "peer %s (%s, backend %s) cannot be reached: %v", p.Node, p.Subnet, p.Attrs.BackendType, s)
}

func (d *Daemon) warn(reason, format string, args ...any) {
	if d.cfg.Events != nil {
		d.cfg.Events.Warning(reason, format, args...)
	}
}

func (d *Daemon) normal(reason, format string, args ...any) {
	if d.cfg.Events != nil {
		d.cfg.Events.Normal(reason, format, args...)
	}
}

// publish updates this node's published attributes when they changed (a
// new backend), and starts the drain clock of the backends it replaced.
func (d *Daemon) publish() error {
	attrs, err := d.attrs()
	if err != nil {
		return err
	}
	if d.published != nil && reflect.DeepEqual(*d.published, attrs) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.cfg.Leases.Publish(ctx, attrs); err != nil {
		return fmt.Errorf("publishing %s backend data: %w", attrs.BackendType, err)
	}
	d.log.Info("published backend", zap.String("backend", attrs.BackendType), zap.ByteString("data", attrs.BackendData))
	d.published = &attrs
	now := time.Now()
	for _, dr := range d.drains {
		if dr.published.IsZero() {
			dr.published = now
		}
	}
	return nil
}
