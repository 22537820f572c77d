// Package kube is overlayd's lease store on the Kubernetes API: the
// subnet.Manager behind both lease modes.
//
// In podCIDR mode (flannel's --kube-subnet-mgr model) a node's subnet is the
// Node's spec.podCIDR(s), assigned by kube-controller-manager, and the agent
// publishes what peers need as annotations on its own Node. In lease mode the
// agents allocate subnets themselves: one coordination.k8s.io Lease per
// subnet, named after it, creation being the lock; peers watch those small
// Lease objects instead of the large Nodes.
//
// Either way one informer (no periodic relist, protobuf, a streamed initial
// list, a transform that keeps only what the lease needs; Nodes are even
// decoded without their status, see slimnode.go) holds the records, its
// store being the only one (store.go). A single loop resolves them into the
// peer snapshot: malformed peers and conflicting claims are refused with one
// log line each, and the earlier claim on a subnet always keeps it. Start
// Run before Acquire: Acquire reads the synced cache.
package kube

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/subnet"
)

// Defaults for Config.
const (
	DefaultLeaseNamespace = "kube-system"
	// DefaultLeaseDuration is how long a Lease object stays valid without
	// renewal (lease mode), like flannel's etcd lease TTL. Renewal happens
	// every third of it, so a short API outage costs nothing.
	DefaultLeaseDuration = 24 * time.Hour
	// DefaultRenewMargin is flanneld's --subnet-lease-renew-margin default.
	DefaultRenewMargin = time.Hour
)

// Config configures the lease store.
type Config struct {
	Client           kubernetes.Interface // built by the caller with protobuf content type (see NewClientConfig)
	NodeName         string
	Net              *netconf.Config // parsed net-conf.json
	AnnotationPrefix string          // --kube-annotation-prefix; default DefaultAnnotationPrefix
	LeaseNamespace   string          // lease mode: where the Lease objects live; default kube-system
	// LeaseDuration is the validity of a Lease object without renewal in
	// lease mode; default DefaultLeaseDuration.
	LeaseDuration time.Duration
	// RenewMargin (--subnet-lease-renew-margin): in lease mode the own
	// Leases are renewed at the latest this long before they expire, and
	// every third of LeaseDuration in any case; zero means only the latter.
	RenewMargin time.Duration
	// SetNodeNetworkUnavailable sets the Node's NetworkUnavailable condition
	// to False once Acquire succeeds, as flanneld does.
	SetNodeNetworkUnavailable bool
	// Events records Events on Nodes (a node claiming this node's subnet,
	// this node refusing its own); nil records none.
	Events *Events
	Log    *zap.Logger
}

// modeImpl is what differs between the two lease modes.
type modeImpl interface {
	newInformer() cache.SharedIndexInformer
	// toRecord returns the record an object in the informer's store holds,
	// without parsing; nil when the object claims nothing.
	toRecord(obj any) *record
	permissions() []permission
	acquire(ctx context.Context, attrs subnet.LeaseAttrs) (subnet.Lease, error)
	publish(ctx context.Context, attrs subnet.LeaseAttrs) error // with m.ownMu held
	// maintain runs in the Run loop after every change and when its timer
	// fires, once the lease is acquired: it keeps the own lease alive and
	// repairs drift. It returns when to run again, or a fatal error.
	maintain(ctx context.Context) (time.Duration, error)
}

type manager struct {
	cfg  Config
	net  *netconf.Config
	keys keys
	log  *zap.Logger
	mode modeImpl

	informer cache.SharedIndexInformer
	reg      cache.ResourceEventHandlerRegistration
	self     *ownNodeWatch // lease mode only

	mu     sync.Mutex
	res    resolution
	synced bool
	// The peers changed since ChangedPeers last asked: these, or any
	// (after a resolve of every record).
	changedPeers map[string]bool
	changedAll   bool
	wake         chan struct{} // closed and replaced after every resolve
	runErr       error

	dirty   chan struct{}
	changed chan struct{}
	// What dirty is about (store.go, changes): every record, or the
	// records of these keys in what they publish alone, new records, and
	// deleted records (key -> node).
	changesMu    sync.Mutex
	resolveAll   bool
	attrsChanged map[string]bool
	added        map[string]bool
	gone         map[string]string

	syncedCh chan struct{}
	failed   chan struct{}
	running  atomic.Bool

	// Run goroutine only.
	reported map[string]problem

	// ownMu serialises writes to the own Node or Leases.
	ownMu    sync.Mutex
	acquired bool
	attrs    subnet.LeaseAttrs
}

// New validates cfg and returns the lease store for cfg.Net.LeaseMode.
// Nothing talks to the API server until Run.
func New(cfg Config) (subnet.Manager, error) {
	m, err := newManager(cfg)
	if err != nil {
		return nil, err
	}
	return m, nil
}

func newManager(cfg Config) (*manager, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("kube lease store: Config.Client is nil")
	case cfg.NodeName == "":
		return nil, errors.New("kube lease store: Config.NodeName is empty (set NODE_NAME to the node's name)")
	case cfg.Net == nil:
		return nil, errors.New("kube lease store: Config.Net is nil")
	}
	if cfg.AnnotationPrefix == "" {
		cfg.AnnotationPrefix = DefaultAnnotationPrefix
	}
	if cfg.LeaseNamespace == "" {
		cfg.LeaseNamespace = DefaultLeaseNamespace
	}
	if cfg.LeaseDuration == 0 {
		cfg.LeaseDuration = DefaultLeaseDuration
	}
	if cfg.LeaseDuration < time.Second {
		return nil, fmt.Errorf("kube lease store: LeaseDuration %s is shorter than one second", cfg.LeaseDuration)
	}
	if cfg.RenewMargin < 0 || cfg.RenewMargin >= cfg.LeaseDuration {
		return nil, fmt.Errorf("kube lease store: RenewMargin %s must be shorter than the LeaseDuration %s", cfg.RenewMargin, cfg.LeaseDuration)
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	k, err := newKeys(cfg.AnnotationPrefix)
	if err != nil {
		return nil, err
	}
	m := &manager{
		cfg:      cfg,
		net:      cfg.Net,
		keys:     k,
		log:      cfg.Log.With(zap.String("leaseMode", string(cfg.Net.LeaseMode))),
		wake:     make(chan struct{}),
		dirty:    make(chan struct{}, 1),
		changed:  make(chan struct{}, 1),
		syncedCh: make(chan struct{}),
		failed:   make(chan struct{}),
		reported: map[string]problem{},
	}
	switch cfg.Net.LeaseMode {
	case netconf.LeaseModePodCIDR, "":
		m.mode = &podCIDRMode{m: m}
	case netconf.LeaseModeLease:
		m.mode = &leaseMode{m: m, own: map[string]*ownLease{}}
	default:
		return nil, fmt.Errorf("kube lease store: unknown LeaseMode %q", cfg.Net.LeaseMode)
	}

	m.informer = m.mode.newInformer()
	if err := m.informer.SetWatchErrorHandlerWithContext(func(ctx context.Context, r *cache.Reflector, err error) {
		m.log.Warn("watching the API server failed; retrying", zap.Error(err))
	}); err != nil {
		return nil, err
	}
	m.reg, err = m.informer.AddEventHandler(m.handlers())
	if err != nil {
		return nil, err
	}
	if cfg.Net.LeaseMode == netconf.LeaseModeLease {
		if m.self, err = newOwnNodeWatch(m); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Peers implements subnet.Manager.
func (m *manager) Peers() ([]subnet.Lease, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.res.leases(), m.synced
}

// Changed implements subnet.Manager.
func (m *manager) Changed() <-chan struct{} { return m.changed }

// ChangedPeers implements subnet.Manager.
func (m *manager) ChangedPeers() ([]string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	nodes, all := slices.Collect(maps.Keys(m.changedPeers)), m.changedAll || !m.synced
	m.changedPeers, m.changedAll = nil, false
	return nodes, all
}

// Peer implements subnet.Manager.
func (m *manager) Peer(node string) (subnet.Lease, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if i, found := m.res.find(node); found {
		return m.res.peers[i].lease(), true
	}
	return subnet.Lease{}, false
}

// Run implements subnet.Manager: it checks the RBAC permissions the mode
// needs, runs the informer, resolves every change into the snapshot and
// keeps the own lease alive, until ctx ends (nil) or the lease is lost.
func (m *manager) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("kube lease store: Run called twice")
	}
	err := m.run(ctx)
	if err != nil && ctx.Err() == nil {
		m.mu.Lock()
		m.runErr = err
		m.mu.Unlock()
		close(m.failed)
		return err
	}
	return nil
}

func (m *manager) run(ctx context.Context) error {
	if err := checkPermissions(ctx, m.log, m.cfg.Client, string(m.net.LeaseMode), m.mode.permissions()); err != nil {
		return err
	}

	informerCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { m.informer.RunWithContext(informerCtx) })
	synced := []cache.DoneChecker{m.reg.HasSyncedChecker()}
	if m.self != nil {
		wg.Go(func() { m.self.informer.RunWithContext(informerCtx) })
		synced = append(synced, m.self.reg.HasSyncedChecker())
	}
	defer wg.Wait()
	defer stop()

	start := time.Now()
	for _, s := range synced {
		select {
		case <-s.Done():
		case <-ctx.Done():
			return nil
		}
	}
	m.resolveNow()
	m.log.Info("lease store synced", zap.Int("peers", len(m.res.peers)), zap.Duration("took", time.Since(start)))
	close(m.syncedCh)

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-m.dirty:
			m.resolveDirty()
		case <-timer.C:
		}
		next, err := m.maintain(ctx)
		if err != nil {
			return err
		}
		timer.Reset(next)
	}
}

func (m *manager) maintain(ctx context.Context) (time.Duration, error) {
	m.ownMu.Lock()
	acquired := m.acquired
	m.ownMu.Unlock()
	if !acquired {
		return time.Hour, nil
	}
	return m.mode.maintain(ctx)
}

// waitSynced blocks until the first snapshot, Run failing, or ctx ending.
func (m *manager) waitSynced(ctx context.Context) error {
	select {
	case <-m.syncedCh:
		return nil
	case <-m.failed:
		return m.failure()
	case <-ctx.Done():
		if !m.running.Load() {
			return fmt.Errorf("waiting for the lease store to sync (is Run running?): %w", ctx.Err())
		}
		return ctx.Err()
	}
}

func (m *manager) failure() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.runErr
}

// state returns the last resolution and a channel closed at the next one.
func (m *manager) state() (resolution, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.res, m.wake
}

// Acquire implements subnet.Manager.
func (m *manager) Acquire(ctx context.Context, attrs subnet.LeaseAttrs) (subnet.Lease, error) {
	if err := checkAttrs(m.net, attrs); err != nil {
		return subnet.Lease{}, err
	}
	if err := m.waitSynced(ctx); err != nil {
		return subnet.Lease{}, err
	}
	m.ownMu.Lock()
	m.acquired = false // a second Acquire: maintain must not repair towards the old attrs meanwhile
	m.ownMu.Unlock()
	lease, err := m.mode.acquire(ctx, attrs)
	if err != nil {
		return subnet.Lease{}, err
	}
	if m.cfg.SetNodeNetworkUnavailable {
		if err := setNetworkAvailable(ctx, m.cfg.Client, m.cfg.NodeName); err != nil {
			return subnet.Lease{}, err
		}
	}
	m.ownMu.Lock()
	m.acquired, m.attrs = true, attrs
	m.ownMu.Unlock()
	m.markDirty() // let Run start maintaining the lease
	fields := []zap.Field{}
	if lease.Subnet.IsValid() {
		fields = append(fields, zap.Stringer("subnet", lease.Subnet))
	}
	if lease.IPv6Subnet.IsValid() {
		fields = append(fields, zap.Stringer("ipv6Subnet", lease.IPv6Subnet))
	}
	m.log.Info("lease acquired", fields...)
	return lease, nil
}

// Publish implements subnet.Manager.
func (m *manager) Publish(ctx context.Context, attrs subnet.LeaseAttrs) error {
	if err := checkAttrs(m.net, attrs); err != nil {
		return err
	}
	// Held throughout, so that maintain never sees the new annotations
	// with the old attrs and "repairs" them back.
	m.ownMu.Lock()
	defer m.ownMu.Unlock()
	if !m.acquired {
		return errors.New("publishing lease attributes: no lease acquired yet")
	}
	if err := m.mode.publish(ctx, attrs); err != nil {
		return err
	}
	m.attrs = attrs
	return nil
}
