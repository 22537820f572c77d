package kube

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	coordv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinformers "k8s.io/client-go/informers/coordination/v1"
	"k8s.io/client-go/informers/internalinterfaces"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/subnet"
)

// Lease mode: one coordination.k8s.io/v1 Lease per subnet, named after it,
// in one namespace. Creating the Lease is the lock (names are unique), the
// holder renews it, an expired one is taken over by a resourceVersion-guarded
// update (only one taker wins), and its owner reference to the holder's Node
// lets the garbage collector remove it with the Node.

const (
	familyIPv4 = "ipv4"
	familyIPv6 = "ipv6"
)

// addressFamily is one family's allocation range from net-conf.json.
type addressFamily struct {
	name     string
	network  netip.Prefix
	bits     int
	min, max netip.Prefix
}

func (f addressFamily) inRange(p netip.Prefix) bool {
	return p.Bits() == f.bits && ip.Covers(f.network, p) &&
		p.Addr().Compare(f.min.Addr()) >= 0 && p.Addr().Compare(f.max.Addr()) <= 0
}

// leaseName is the Lease object's name for a subnet: the address with "."
// and ":" written as "-", then the length ("subnet-10-244-3-0-24",
// "subnet-fd00-10-244-3---64"). The mapping is one to one.
func leaseName(p netip.Prefix) string {
	a := strings.NewReplacer(".", "-", ":", "-").Replace(p.Addr().String())
	return fmt.Sprintf("subnet-%s-%d", a, p.Bits())
}

type ownLease struct {
	obj     *coordv1.Lease // as the API server last returned it
	subnet  netip.Prefix
	renewed time.Time
}

type leaseMode struct {
	m       *manager
	own     map[string]*ownLease // by family; guarded by m.ownMu
	nodeRef metav1.OwnerReference
}

func (l *leaseMode) families() []addressFamily {
	n := l.m.net
	var fs []addressFamily
	if n.EnableIPv4 {
		fs = append(fs, addressFamily{familyIPv4, n.Network, n.SubnetLen, n.SubnetMin, n.SubnetMax})
	}
	if n.EnableIPv6 {
		fs = append(fs, addressFamily{familyIPv6, n.IPv6Network, n.IPv6SubnetLen, n.IPv6SubnetMin, n.IPv6SubnetMax})
	}
	return fs
}

func (l *leaseMode) renewEvery() time.Duration { return l.m.cfg.LeaseDuration / 3 }

func (l *leaseMode) newInformer() cache.SharedIndexInformer {
	label := l.m.keys.leaseFamily
	inf := coordinformers.NewLeaseInformerWithOptions(l.m.cfg.Client, l.m.cfg.LeaseNamespace, internalinterfaces.InformerOptions{
		TweakListOptions: func(o *metav1.ListOptions) { o.LabelSelector = label },
	})
	_ = inf.SetTransform(l.trim)
	return inf
}

// trim drops what peers do not need (managed fields, owner references,
// foreign labels and annotations). Idempotent.
func (l *leaseMode) trim(obj any) (any, error) {
	le, ok := obj.(*coordv1.Lease)
	if !ok {
		return obj, nil
	}
	var labels map[string]string
	if v, ok := le.Labels[l.m.keys.leaseFamily]; ok {
		labels = map[string]string{l.m.keys.leaseFamily: v}
	}
	return &coordv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Name:              le.Name,
			Namespace:         le.Namespace,
			UID:               le.UID,
			ResourceVersion:   le.ResourceVersion,
			CreationTimestamp: le.CreationTimestamp,
			Labels:            labels,
			Annotations:       l.m.keys.only(le.Annotations),
		},
		Spec: *le.Spec.DeepCopy(),
	}, nil
}

func (l *leaseMode) toRecord(obj any) *record {
	le, ok := obj.(*coordv1.Lease)
	if !ok {
		return nil
	}
	holder := ptr.Deref(le.Spec.HolderIdentity, "")
	if holder == "" {
		return nil // released: free to take, claims nothing
	}
	r := &record{key: le.Namespace + "/" + le.Name, name: le.Name, node: holder, created: le.CreationTimestamp.Time}
	p, prob := l.subnetOf(le)
	if !prob.ok() {
		r.subnetP = &prob
	} else if p.Addr().Is4() {
		r.v4 = p
	} else {
		r.v6 = p
	}
	r.attrs, r.attrsP = l.m.keys.decodeRecord(l.m.net, le.Annotations)
	return r
}

// subnetOf reads the subnet a Lease stands for and checks that its name and
// family label agree, so that the name's uniqueness really locks the subnet.
func (l *leaseMode) subnetOf(le *coordv1.Lease) (netip.Prefix, problem) {
	k := l.m.keys
	s, ok := le.Annotations[k.subnet]
	if !ok {
		return netip.Prefix{}, problem{reason: reasonMalformedSubnet, detail: fmt.Sprintf("Lease %s has no annotation %s", le.Name, k.subnet)}
	}
	p, err := ip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, problem{reason: reasonMalformedSubnet, detail: fmt.Sprintf("Lease %s: annotation %s: %v", le.Name, k.subnet, err)}
	}
	fam := familyIPv4
	if p.Addr().Is6() {
		fam = familyIPv6
	}
	if got := le.Labels[k.leaseFamily]; got != fam {
		return netip.Prefix{}, problem{reason: reasonMalformedSubnet, detail: fmt.Sprintf("Lease %s: label %s is %q but subnet %s is %s", le.Name, k.leaseFamily, got, p, fam)}
	}
	if want := leaseName(p); le.Name != want {
		return netip.Prefix{}, problem{reason: reasonMalformedSubnet, detail: fmt.Sprintf("Lease %s claims subnet %s but a Lease for it must be named %s", le.Name, p, want)}
	}
	return p, problem{}
}

func (l *leaseMode) permissions() []permission {
	self, ns := l.m.cfg.NodeName, l.m.cfg.LeaseNamespace
	perms := []permission{{verb: "get", resource: "nodes", name: self}}
	if l.m.cfg.SetNodeNetworkUnavailable {
		perms = append(perms, permission{verb: "patch", resource: "nodes", subresource: "status", name: self})
	}
	for _, verb := range []string{"get", "list", "watch", "create", "update"} {
		perms = append(perms, permission{verb: verb, group: coordv1.GroupName, resource: "leases", namespace: ns})
	}
	return append(perms, eventPermissions()...)
}

// cachedLease is a Lease from the informer with its parsed subnet.
type cachedLease struct {
	obj    *coordv1.Lease
	subnet netip.Prefix
	holder string
}

// cached returns the well-formed Leases of one family from the cache, in
// claim order (creation time, then name), and every Lease name present.
func (l *leaseMode) cached(fam string) ([]cachedLease, map[string]bool) {
	var out []cachedLease
	names := map[string]bool{}
	for _, obj := range l.m.informer.GetStore().List() {
		le := obj.(*coordv1.Lease)
		names[le.Name] = true
		p, prob := l.subnetOf(le)
		if !prob.ok() || le.Labels[l.m.keys.leaseFamily] != fam {
			continue
		}
		out = append(out, cachedLease{obj: le, subnet: p, holder: ptr.Deref(le.Spec.HolderIdentity, "")})
	}
	slices.SortFunc(out, func(a, b cachedLease) int {
		if c := a.obj.CreationTimestamp.Time.Compare(b.obj.CreationTimestamp.Time); c != 0 {
			return c
		}
		return cmp.Compare(a.obj.Name, b.obj.Name)
	})
	return out, names
}

// expiry is when a Lease stops being valid; zero for one without holder or times.
func expiry(le *coordv1.Lease) time.Time {
	if ptr.Deref(le.Spec.HolderIdentity, "") == "" || le.Spec.RenewTime == nil || le.Spec.LeaseDurationSeconds == nil {
		return time.Time{}
	}
	return le.Spec.RenewTime.Add(time.Duration(*le.Spec.LeaseDurationSeconds) * time.Second)
}

// desired is the complete Lease object this agent writes for a subnet.
func (l *leaseMode) desired(p netip.Prefix, fam string, attrs subnet.LeaseAttrs, now time.Time) *coordv1.Lease {
	m := l.m
	annotations := m.keys.encode(m.net, attrs)
	annotations[m.keys.subnet] = p.String()
	t := metav1.NewMicroTime(now)
	return &coordv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Name:            leaseName(p),
			Namespace:       m.cfg.LeaseNamespace,
			Labels:          map[string]string{m.keys.leaseFamily: fam},
			Annotations:     annotations,
			OwnerReferences: []metav1.OwnerReference{l.nodeRef},
		},
		Spec: coordv1.LeaseSpec{
			HolderIdentity:       ptr.To(m.cfg.NodeName),
			LeaseDurationSeconds: ptr.To(int32(m.cfg.LeaseDuration / time.Second)),
			AcquireTime:          &t,
			RenewTime:            &t,
			LeaseTransitions:     ptr.To(int32(0)),
		},
	}
}

func (l *leaseMode) acquire(ctx context.Context, attrs subnet.LeaseAttrs) (subnet.Lease, error) {
	node, err := l.ownNode(ctx)
	if err != nil {
		return subnet.Lease{}, err
	}
	l.nodeRef = metav1.OwnerReference{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}
	lease := subnet.Lease{Node: l.m.cfg.NodeName, Attrs: attrs}
	own := map[string]*ownLease{}
	for _, f := range l.families() {
		obj, err := l.acquireFamily(ctx, f, attrs)
		if err != nil {
			return subnet.Lease{}, err
		}
		o := &ownLease{obj: obj, renewed: time.Now()}
		o.subnet, _ = l.subnetOf(obj)
		own[f.name] = o
		if f.name == familyIPv4 {
			lease.Subnet = o.subnet
		} else {
			lease.IPv6Subnet = o.subnet
		}
	}
	l.m.ownMu.Lock()
	l.own = own
	l.m.ownMu.Unlock()
	return lease, nil
}

// ownNode gets the own Node (for the owner reference), waiting for it to
// be registered.
func (l *leaseMode) ownNode(ctx context.Context) (*corev1.Node, error) {
	m := l.m
	wait := waitLogger{log: m.log.With(zap.String("node", m.cfg.NodeName))}
	for {
		n, err := m.cfg.Client.CoreV1().Nodes().Get(ctx, m.cfg.NodeName, metav1.GetOptions{})
		switch {
		case err == nil:
			return n, nil
		case !apierrors.IsNotFound(err):
			return nil, fmt.Errorf("getting node %s: %w", m.cfg.NodeName, err)
		}
		wait.say("waiting for the Node object of this node to be registered")
		select {
		case <-time.After(2 * time.Second):
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for node %s: %w", m.cfg.NodeName, ctx.Err())
		}
	}
}

// acquireFamily gets a subnet of one family: the one this node already
// holds (a restart), else a free one, else an expired one; and waits when
// there is none.
func (l *leaseMode) acquireFamily(ctx context.Context, f addressFamily, attrs subnet.LeaseAttrs) (*coordv1.Lease, error) {
	m := l.m
	self := m.cfg.NodeName
	wait := waitLogger{log: m.log.With(zap.String("family", f.name))}
	for {
		_, wake := m.state()
		leases, names := l.cached(f.name)
		now := time.Now()

		// 1. Our own from before a restart; extra ones (a lost create
		// response retried) are released.
		var kept *coordv1.Lease
		for _, c := range leases {
			if c.holder != self {
				continue
			}
			if kept != nil || !f.inRange(c.subnet) {
				l.release(ctx, c)
				continue
			}
			obj, err := l.reclaim(ctx, c, f, attrs)
			if err != nil {
				return nil, err
			}
			kept = obj
		}
		if kept != nil {
			m.log.Info("kept the subnet this node held before", zap.String("lease", kept.Name))
			return kept, nil
		}

		// 2. A free subnet.
		if obj, err := l.createFree(ctx, f, leases, names, attrs); obj != nil || err != nil {
			return obj, err
		}

		// 3. An expired one, longest expired first.
		var expired []cachedLease
		next := time.Time{}
		for _, c := range leases {
			if c.holder == self || !f.inRange(c.subnet) {
				continue
			}
			e := expiry(c.obj)
			if e.Before(now) {
				expired = append(expired, c)
			} else if next.IsZero() || e.Before(next) {
				next = e
			}
		}
		slices.SortFunc(expired, func(a, b cachedLease) int { return expiry(a.obj).Compare(expiry(b.obj)) })
		for _, c := range expired {
			obj, err := l.write(ctx, c.obj, c.subnet, f.name, attrs, true)
			switch {
			case err == nil:
				m.log.Info("took over an expired lease", zap.String("lease", c.obj.Name),
					zap.String("previousHolder", c.holder), zap.Time("expired", expiry(c.obj)))
				return obj, nil
			case apierrors.IsConflict(err) || apierrors.IsNotFound(err):
				continue // someone renewed, took or removed it first
			default:
				return nil, fmt.Errorf("taking over Lease %s/%s: %w", c.obj.Namespace, c.obj.Name, err)
			}
		}

		// 4. Wait for a Lease to go away or expire.
		delay := time.Minute
		if !next.IsZero() {
			delay = min(delay, time.Until(next)+100*time.Millisecond)
		}
		wait.say("no free subnet between SubnetMin and SubnetMax; waiting for one to be released or to expire",
			zap.Stringer("subnetMin", f.min), zap.Stringer("subnetMax", f.max), zap.Int("leases", len(leases)), zap.Time("nextExpiry", next))
		timer := time.NewTimer(delay)
		select {
		case <-wake:
		case <-timer.C:
		case <-m.failed:
			timer.Stop()
			return nil, m.failure()
		case <-ctx.Done():
			timer.Stop()
			return nil, fmt.Errorf("acquiring a %s subnet: %w", f.name, ctx.Err())
		}
		timer.Stop()
	}
}

// reclaim renews a Lease the cache says this node holds; nil, nil when it
// turns out another node holds it now.
func (l *leaseMode) reclaim(ctx context.Context, c cachedLease, f addressFamily, attrs subnet.LeaseAttrs) (*coordv1.Lease, error) {
	cur := c.obj
	for range 3 {
		obj, err := l.write(ctx, cur, c.subnet, f.name, attrs, false)
		if err == nil {
			return obj, nil
		}
		if !apierrors.IsConflict(err) {
			if apierrors.IsNotFound(err) {
				return nil, nil
			}
			return nil, fmt.Errorf("renewing Lease %s/%s: %w", cur.Namespace, cur.Name, err)
		}
		fresh, err := l.m.cfg.Client.CoordinationV1().Leases(cur.Namespace).Get(ctx, cur.Name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) {
				return nil, nil
			}
			return nil, fmt.Errorf("reading Lease %s/%s: %w", cur.Namespace, cur.Name, err)
		}
		if ptr.Deref(fresh.Spec.HolderIdentity, "") != l.m.cfg.NodeName {
			return nil, nil
		}
		cur = fresh
	}
	return nil, nil
}

// createFree creates the Lease of the first free subnet, starting at a place
// derived from the node name so that agents starting together rarely race
// for the same one, and a node tends to get the same subnet again.
func (l *leaseMode) createFree(ctx context.Context, f addressFamily, leases []cachedLease, names map[string]bool, attrs subnet.LeaseAttrs) (*coordv1.Lease, error) {
	var held intervals
	for _, c := range leases {
		if held.overlapping(c.subnet) == nil {
			held.insert(c.subnet, nil)
		}
	}
	first, err := ip.SubnetIndex(f.network, f.min)
	if err != nil {
		return nil, err
	}
	last, err := ip.SubnetIndex(f.network, f.max)
	if err != nil {
		return nil, err
	}
	count := last - first + 1
	if count == 0 {
		count = math.MaxUint64
	}
	h := fnv.New64a()
	h.Write([]byte(l.m.cfg.NodeName))
	start := h.Sum64() % count
	for i := uint64(0); i < count; i++ {
		p, err := ip.NthSubnet(f.network, f.bits, first+(start+i)%count)
		if err != nil {
			return nil, err
		}
		name := leaseName(p)
		if names[name] || held.overlapping(p) != nil {
			continue
		}
		obj, err := l.m.cfg.Client.CoordinationV1().Leases(l.m.cfg.LeaseNamespace).Create(ctx, l.desired(p, f.name, attrs, time.Now()), metav1.CreateOptions{})
		switch {
		case err == nil:
			l.m.log.Info("allocated a free subnet", zap.Stringer("subnet", p), zap.String("lease", name))
			return obj, nil
		case apierrors.IsAlreadyExists(err):
			names[name] = true // another agent was faster; the cache had not seen it yet
			continue
		default:
			return nil, fmt.Errorf("creating Lease %s/%s for subnet %s: %w", l.m.cfg.LeaseNamespace, name, p, err)
		}
	}
	return nil, nil
}

// write replaces a Lease with this agent's version, guarded by cur's
// resourceVersion. takeover counts a transition and restarts acquireTime.
func (l *leaseMode) write(ctx context.Context, cur *coordv1.Lease, p netip.Prefix, fam string, attrs subnet.LeaseAttrs, takeover bool) (*coordv1.Lease, error) {
	now := time.Now()
	want := l.desired(p, fam, attrs, now)
	want.ResourceVersion = cur.ResourceVersion
	transitions := ptr.Deref(cur.Spec.LeaseTransitions, 0)
	if takeover || ptr.Deref(cur.Spec.HolderIdentity, "") != l.m.cfg.NodeName {
		transitions++
	} else if cur.Spec.AcquireTime != nil {
		want.Spec.AcquireTime = cur.Spec.AcquireTime.DeepCopy()
	}
	want.Spec.LeaseTransitions = &transitions
	return l.m.cfg.Client.CoordinationV1().Leases(cur.Namespace).Update(ctx, want, metav1.UpdateOptions{})
}

// release gives up a Lease this node holds in excess: no holder means free
// to take for anyone, and no claim in any peer's snapshot.
func (l *leaseMode) release(ctx context.Context, c cachedLease) {
	want := l.desired(c.subnet, c.obj.Labels[l.m.keys.leaseFamily], subnet.LeaseAttrs{}, time.Now())
	want.ResourceVersion = c.obj.ResourceVersion
	want.Annotations = map[string]string{l.m.keys.subnet: c.subnet.String()}
	want.Spec = coordv1.LeaseSpec{LeaseTransitions: c.obj.Spec.LeaseTransitions}
	if _, err := l.m.cfg.Client.CoordinationV1().Leases(c.obj.Namespace).Update(ctx, want, metav1.UpdateOptions{}); err != nil {
		l.m.log.Warn("releasing an extra lease failed", zap.String("lease", c.obj.Name), zap.Error(err))
		return
	}
	l.m.log.Info("released an extra lease this node held", zap.String("lease", c.obj.Name))
}

func (l *leaseMode) publish(ctx context.Context, attrs subnet.LeaseAttrs) error {
	for _, fam := range slices.Sorted(maps.Keys(l.own)) {
		if err := l.renew(ctx, fam, l.own[fam], attrs); err != nil {
			return fmt.Errorf("publishing lease attributes: %w", err)
		}
	}
	return nil
}

// lostError is a lease another node now holds: the agent must stop using
// the subnet.
type lostError struct{ msg string }

func (e *lostError) Error() string { return e.msg }

// maintain renews the own Leases every third of their duration, and at once
// when the cache shows one changed hands or vanished.
func (l *leaseMode) maintain(ctx context.Context) (time.Duration, error) {
	m := l.m
	m.ownMu.Lock()
	defer m.ownMu.Unlock()
	every := l.renewEvery()
	next := every
	for _, fam := range slices.Sorted(maps.Keys(l.own)) {
		o := l.own[fam]
		since := time.Since(o.renewed)
		obj, exists, _ := m.informer.GetStore().GetByKey(o.obj.Namespace + "/" + o.obj.Name)
		suspicious := (exists && ptr.Deref(obj.(*coordv1.Lease).Spec.HolderIdentity, "") != m.cfg.NodeName) ||
			(!exists && since > 5*time.Second)
		if since < every && !suspicious {
			next = min(next, every-since)
			continue
		}
		err := l.renew(ctx, fam, o, m.attrs)
		var lost *lostError
		switch {
		case err == nil:
		case errors.As(err, &lost):
			return 0, err
		default:
			retry := min(max(every/10, time.Second), 30*time.Second)
			m.log.Warn("renewing the lease failed; retrying", zap.String("lease", o.obj.Name), zap.Duration("retryIn", retry), zap.Error(err))
			next = min(next, retry)
		}
	}
	return next, nil
}

// renew writes the own Lease with a fresh renewTime and attrs. A Lease that
// changed hands is a lostError; one that was deleted is created again.
func (l *leaseMode) renew(ctx context.Context, fam string, o *ownLease, attrs subnet.LeaseAttrs) error {
	m := l.m
	leases := m.cfg.Client.CoordinationV1().Leases(o.obj.Namespace)
	for range 3 {
		got, err := l.write(ctx, o.obj, o.subnet, fam, attrs, false)
		switch {
		case err == nil:
			if got.UID != o.obj.UID { // Leases allow create on update
				m.log.Warn("the own lease had been deleted; created it again", zap.String("lease", got.Name))
			}
			o.obj, o.renewed = got, time.Now()
			return nil
		case apierrors.IsNotFound(err):
			m.log.Warn("the own lease was deleted; creating it again", zap.String("lease", o.obj.Name))
			got, err := leases.Create(ctx, l.desired(o.subnet, fam, attrs, time.Now()), metav1.CreateOptions{})
			if err == nil {
				o.obj, o.renewed = got, time.Now()
				return nil
			}
			if !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("creating Lease %s/%s again: %w", o.obj.Namespace, o.obj.Name, err)
			}
		case !apierrors.IsConflict(err):
			return fmt.Errorf("renewing Lease %s/%s: %w", o.obj.Namespace, o.obj.Name, err)
		}
		fresh, err := leases.Get(ctx, o.obj.Name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("reading Lease %s/%s: %w", o.obj.Namespace, o.obj.Name, err)
		}
		if holder := ptr.Deref(fresh.Spec.HolderIdentity, ""); holder != m.cfg.NodeName {
			return &lostError{fmt.Sprintf("lease %s/%s for subnet %s is now held by %q (this agent did not renew it in time); restart to acquire a subnet again",
				o.obj.Namespace, o.obj.Name, o.subnet, holder)}
		}
		o.obj = fresh
	}
	return fmt.Errorf("renewing Lease %s/%s: conflicting writes", o.obj.Namespace, o.obj.Name)
}
