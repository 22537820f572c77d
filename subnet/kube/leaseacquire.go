package kube

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"
	coordv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/overlayd/overlayd/subnet"
)

// Acquiring a subnet in lease mode: the allocator decides, this file writes.

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
	waiting := waitLogger{log: m.log.With(zap.String("node", m.cfg.NodeName))}
	var node *corev1.Node
	err := wait.PollUntilContextCancel(ctx, 2*time.Second, true, func(ctx context.Context) (bool, error) {
		n, err := m.cfg.Client.CoreV1().Nodes().Get(ctx, m.cfg.NodeName, metav1.GetOptions{})
		switch {
		case err == nil:
			node = n
			return true, nil
		case !apierrors.IsNotFound(err):
			return false, fmt.Errorf("getting node %s: %w", m.cfg.NodeName, err)
		}
		waiting.say("waiting for the Node object of this node to be registered")
		return false, nil
	})
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("waiting for node %s: %w", m.cfg.NodeName, ctx.Err())
	}
	return node, err
}

// acquireFamily gets a subnet of one family: the one this node already
// holds (a restart), else a free one, else an expired one; and waits when
// there is none.
func (l *leaseMode) acquireFamily(ctx context.Context, f addressFamily, attrs subnet.LeaseAttrs) (*coordv1.Lease, error) {
	m := l.m
	alloc, err := newAllocator(f, m.cfg.NodeName)
	if err != nil {
		return nil, err
	}
	waiting := waitLogger{log: m.log.With(zap.String("family", f.name))}
	for {
		_, wake := m.state()
		known, cached := l.cachedLeases()
		now := time.Now()
		plan := alloc.plan(known, now)

		if obj, err := l.keepOwn(ctx, alloc, plan, known, cached, attrs, now); obj != nil || err != nil {
			return obj, err
		}
		if obj, err := l.createFree(ctx, f, plan, attrs); obj != nil || err != nil {
			return obj, err
		}
		if obj, err := l.takeOver(ctx, f, plan, cached, attrs); obj != nil || err != nil {
			return obj, err
		}

		waiting.say("no free subnet between SubnetMin and SubnetMax; waiting for one to be released or to expire",
			zap.Stringer("subnetMin", f.min), zap.Stringer("subnetMax", f.max), zap.Int("leases", len(known)), zap.Time("nextExpiry", plan.nextExpiry))
		timer := time.NewTimer(plan.retryIn(now))
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

// keepOwn renews the Lease this node held before a restart, and releases
// its extra ones (a lost create response retried). When the kept one turns
// out to be another node's now, the next one of this node's is kept.
func (l *leaseMode) keepOwn(ctx context.Context, alloc *allocator, plan allocation, known []knownLease,
	cached map[string]*coordv1.Lease, attrs subnet.LeaseAttrs, now time.Time) (*coordv1.Lease, error) {
	var kept *coordv1.Lease
	for plan.keep != nil {
		obj, err := l.reclaim(ctx, cached[plan.keep.name], plan.keep.subnet, alloc.family.name, attrs)
		if err != nil {
			return nil, err
		}
		if obj != nil {
			kept = obj
			break
		}
		lost := plan.keep.name
		known = without(known, lost)
		plan = alloc.plan(known, now)
	}
	for _, x := range plan.extras {
		l.release(ctx, cached[x.name], x.subnet, alloc.family.name)
	}
	if kept != nil {
		l.m.log.Info("kept the subnet this node held before", zap.String("lease", kept.Name))
	}
	return kept, nil
}

// without returns the leases but the one named name.
func without(leases []knownLease, name string) []knownLease {
	out := make([]knownLease, 0, len(leases))
	for _, l := range leases {
		if l.name != name {
			out = append(out, l)
		}
	}
	return out
}

// errNotOurs ends a reclaim: another node holds the Lease now.
var errNotOurs = errors.New("the Lease is held by another node now")

// reclaim renews a Lease the cache says this node holds; nil, nil when it
// turns out another node holds it now, or it is gone.
func (l *leaseMode) reclaim(ctx context.Context, cur *coordv1.Lease, p netip.Prefix, fam string, attrs subnet.LeaseAttrs) (*coordv1.Lease, error) {
	var got *coordv1.Lease
	reread := false
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if reread {
			fresh, err := l.get(ctx, cur.Name)
			if err != nil {
				return err
			}
			if ptr.Deref(fresh.Spec.HolderIdentity, "") != l.m.cfg.NodeName {
				return errNotOurs
			}
			cur = fresh
		}
		reread = true
		obj, err := l.write(ctx, cur, p, fam, attrs, false)
		if err != nil {
			return fmt.Errorf("renewing Lease %s/%s: %w", cur.Namespace, cur.Name, err)
		}
		got = obj
		return nil
	})
	switch {
	case err == nil:
		return got, nil
	case errors.Is(err, errNotOurs), apierrors.IsNotFound(err), apierrors.IsConflict(err):
		return nil, nil // not ours any more, or others keep writing it: not ours to keep
	}
	return nil, err
}

// createFree creates the Lease of the first free subnet the allocator
// offers; another agent may have been faster than the cache showed.
func (l *leaseMode) createFree(ctx context.Context, f addressFamily, plan allocation, attrs subnet.LeaseAttrs) (*coordv1.Lease, error) {
	for p, err := range plan.free {
		if err != nil {
			return nil, err
		}
		obj, err := l.leases().Create(ctx, l.desired(p, f.name, attrs, time.Now()), metav1.CreateOptions{})
		switch {
		case err == nil:
			l.m.log.Info("allocated a free subnet", zap.Stringer("subnet", p), zap.String("lease", obj.Name))
			return obj, nil
		case apierrors.IsAlreadyExists(err):
			continue
		default:
			return nil, fmt.Errorf("creating Lease %s/%s for subnet %s: %w", l.m.cfg.LeaseNamespace, leaseName(p), p, err)
		}
	}
	return nil, nil
}

// takeOver takes the first expired Lease the allocator offers that no
// other taker wins first.
func (l *leaseMode) takeOver(ctx context.Context, f addressFamily, plan allocation, cached map[string]*coordv1.Lease, attrs subnet.LeaseAttrs) (*coordv1.Lease, error) {
	for _, x := range plan.expired {
		cur := cached[x.name]
		obj, err := l.write(ctx, cur, x.subnet, f.name, attrs, true)
		switch {
		case err == nil:
			l.m.log.Info("took over an expired lease", zap.String("lease", x.name),
				zap.String("previousHolder", x.holder), zap.Time("expired", x.expiry))
			return obj, nil
		case apierrors.IsConflict(err) || apierrors.IsNotFound(err):
			continue // someone renewed, took or removed it first
		default:
			return nil, fmt.Errorf("taking over Lease %s/%s: %w", cur.Namespace, cur.Name, err)
		}
	}
	return nil, nil
}

// release gives up a Lease this node holds in excess: no holder means free
// to take for anyone, and no claim in any peer's snapshot.
func (l *leaseMode) release(ctx context.Context, cur *coordv1.Lease, p netip.Prefix, fam string) {
	want := l.desired(p, fam, subnet.LeaseAttrs{}, time.Now())
	want.ResourceVersion = cur.ResourceVersion
	want.Annotations = map[string]string{l.m.keys.subnet: p.String()}
	want.Spec = coordv1.LeaseSpec{LeaseTransitions: cur.Spec.LeaseTransitions}
	if _, err := l.leases().Update(ctx, want, metav1.UpdateOptions{}); err != nil {
		l.m.log.Warn("releasing an extra lease failed", zap.String("lease", cur.Name), zap.Error(err))
		return
	}
	l.m.log.Info("released an extra lease this node held", zap.String("lease", cur.Name))
}
