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
// decoded without their status, see slimnode.go) feeds a set of records. A
// single loop resolves them into the peer snapshot: malformed peers and
// conflicting claims are refused with one log line each, and the earlier
// claim on a subnet always keeps it. Start Run before Acquire: Acquire reads
// the synced cache.
package kube

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	eventrecord "k8s.io/client-go/tools/record"

	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/pkg/metrics"
	"github.com/overlayd/overlayd/subnet"
)

// Defaults for Config.
const (
	DefaultLeaseNamespace = "kube-system"
	// DefaultLeaseDuration is how long a Lease object stays valid without
	// renewal (lease mode), like flannel's etcd lease TTL. Renewal happens
	// every third of it, so a short API outage costs nothing.
	DefaultLeaseDuration = 24 * time.Hour
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
	// SetNodeNetworkUnavailable sets the Node's NetworkUnavailable condition
	// to False once Acquire succeeds, as flanneld does.
	SetNodeNetworkUnavailable bool
	Log                       *zap.Logger
}

// modeImpl is what differs between the two lease modes.
type modeImpl interface {
	newInformer() cache.SharedIndexInformer
	// toRecord reduces a (transformed) object to a record; nil when the
	// object claims nothing.
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

	mu      sync.Mutex
	records map[string]*record
	res     resolution
	synced  bool
	wake    chan struct{} // closed and replaced after every resolve
	runErr  error

	dirty    chan struct{}
	changed  chan struct{}
	syncedCh chan struct{}
	failed   chan struct{}
	running  atomic.Bool

	// Run goroutine only.
	reported map[string]problem
	recorder eventrecord.EventRecorder

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
		records:  map[string]*record{},
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
	m.reg, err = m.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { m.upsert(obj) },
		UpdateFunc: func(_, obj any) { m.upsert(obj) },
		DeleteFunc: m.remove,
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// upsert stores the object's record and marks the state dirty if it changed.
func (m *manager) upsert(obj any) {
	key, err := cache.MetaNamespaceKeyFunc(obj)
	if err != nil {
		return
	}
	r := m.mode.toRecord(obj)
	m.mu.Lock()
	old, had := m.records[key]
	switch {
	case r == nil && !had, r != nil && had && old.equal(r):
		m.mu.Unlock()
		return
	case r == nil:
		delete(m.records, key)
	default:
		m.records[key] = r
	}
	m.mu.Unlock()
	m.markDirty()
}

func (m *manager) remove(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		return
	}
	m.mu.Lock()
	_, had := m.records[key]
	delete(m.records, key)
	m.mu.Unlock()
	if had {
		m.markDirty()
	}
}

func (m *manager) markDirty() {
	select {
	case m.dirty <- struct{}{}:
	default:
	}
}

// Peers implements subnet.Manager.
func (m *manager) Peers() ([]subnet.Lease, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.res.leases(), m.synced
}

// Changed implements subnet.Manager.
func (m *manager) Changed() <-chan struct{} { return m.changed }

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

	broadcaster := eventrecord.NewBroadcaster(eventrecord.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: m.cfg.Client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	m.recorder = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "overlayd", Host: m.cfg.NodeName})

	informerCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { m.informer.RunWithContext(informerCtx) })
	defer wg.Wait()
	defer stop()

	start := time.Now()
	select {
	case <-m.reg.HasSyncedChecker().Done():
	case <-ctx.Done():
		return nil
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
			m.resolveNow()
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

// resolveNow recomputes the snapshot from the records, reports newly
// skipped peers and notifies Changed if the peers differ.
func (m *manager) resolveNow() {
	m.mu.Lock()
	recs := make([]*record, 0, len(m.records))
	for _, r := range m.records {
		recs = append(recs, r)
	}
	m.mu.Unlock()

	res := resolve(m.net, m.cfg.NodeName, recs)
	m.report(res)

	m.mu.Lock()
	changed := !m.synced || !slices.EqualFunc(m.res.peers, res.peers, samePeer)
	m.res, m.synced = res, true
	close(m.wake)
	m.wake = make(chan struct{})
	m.mu.Unlock()

	leasesGauge.Set(float64(len(res.peers)))
	if changed {
		select {
		case m.changed <- struct{}{}:
		default:
		}
	}
}

// report logs and counts each skipped peer once per distinct problem, and
// records an Event on a node claiming this node's subnet.
func (m *manager) report(res resolution) {
	for key, s := range res.skipped {
		if m.reported[key] == s.problem {
			continue
		}
		m.reported[key] = s.problem
		metrics.PeersSkipped.WithLabelValues(s.problem.reason).Inc()
		fields := []zap.Field{zap.String("peer", s.record.node), zap.String("object", key),
			zap.String("reason", s.problem.reason), zap.String("detail", s.problem.detail)}
		switch s.problem.reason {
		case reasonMissingSubnet, reasonMissingAnnotations:
			m.log.Info("skipping peer until it is complete", fields...)
		default:
			m.log.Warn("skipping peer", fields...)
		}
		if s.problem.reason == reasonOverlap && s.problem.holder == m.cfg.NodeName {
			m.event(s.record, "SubnetConflict", "%s: refused; node %s keeps it", s.problem.detail, m.cfg.NodeName)
		}
	}
	for key := range m.reported {
		if _, still := res.skipped[key]; !still {
			delete(m.reported, key)
			m.log.Debug("peer no longer skipped", zap.String("object", key))
		}
	}
}

// event records a Warning Event on the node a record speaks for.
func (m *manager) event(r *record, reason, format string, args ...any) {
	if m.recorder == nil {
		return
	}
	// The node's name as its UID, as the kubelet records Node events:
	// kubectl describe node shows them, and records need not keep UIDs.
	ref := &corev1.ObjectReference{APIVersion: "v1", Kind: "Node", Name: r.node, UID: types.UID(r.node)}
	m.recorder.Eventf(ref, corev1.EventTypeWarning, reason, format, args...)
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

// record returns the current record of an object, nil if none.
func (m *manager) record(key string) *record {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.records[key]
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

// waitLogger logs what a wait is for, once per distinct reason and again
// every minute while it lasts, so a stuck agent says why.
type waitLogger struct {
	log      *zap.Logger
	last     string
	loggedAt time.Time
	since    time.Time
}

func (w *waitLogger) say(msg string, fields ...zap.Field) {
	now := time.Now()
	if msg == w.last && now.Sub(w.loggedAt) < time.Minute {
		return
	}
	if msg != w.last {
		w.since = now
	}
	w.last, w.loggedAt = msg, now
	w.log.Info(msg, append(fields, zap.Duration("waited", now.Sub(w.since).Round(time.Second)))...)
}
