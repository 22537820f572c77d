package kube

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/overlayd/overlayd/subnet"
)

// Keeping the own Leases in lease mode: renewals, published attributes,
// and noticing a Lease lost to another node.

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
		cached := l.cachedLease(o.obj.Namespace + "/" + o.obj.Name)
		suspicious := (cached != nil && ptr.Deref(cached.Spec.HolderIdentity, "") != m.cfg.NodeName) ||
			(cached == nil && since > 5*time.Second)
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
			retryIn := min(max(every/10, time.Second), 30*time.Second)
			m.log.Warn("renewing the lease failed; retrying", zap.String("lease", o.obj.Name), zap.Duration("retryIn", retryIn), zap.Error(err))
			next = min(next, retryIn)
		}
	}
	return next, nil
}

// renew writes the own Lease with a fresh renewTime and attrs. A Lease that
// changed hands is a lostError; one that was deleted is created again. On a
// conflict (or a create racing another) it reads the Lease again and retries.
func (l *leaseMode) renew(ctx context.Context, fam string, o *ownLease, attrs subnet.LeaseAttrs) error {
	retriable := func(err error) bool { return apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) }
	reread := false
	return retry.OnError(retry.DefaultRetry, retriable, func() error {
		if reread {
			fresh, err := l.get(ctx, o.obj.Name)
			if err != nil {
				return err
			}
			if holder := ptr.Deref(fresh.Spec.HolderIdentity, ""); holder != l.m.cfg.NodeName {
				return &lostError{fmt.Sprintf("lease %s/%s for subnet %s is now held by %q (this agent did not renew it in time); restart to acquire a subnet again",
					o.obj.Namespace, o.obj.Name, o.subnet, holder)}
			}
			o.obj = fresh
		}
		reread = true
		got, err := l.write(ctx, o.obj, o.subnet, fam, attrs, false)
		switch {
		case err == nil:
			if got.UID != o.obj.UID { // Leases allow create on update
				l.m.log.Warn("the own lease had been deleted; created it again", zap.String("lease", got.Name))
			}
		case apierrors.IsNotFound(err):
			l.m.log.Warn("the own lease was deleted; creating it again", zap.String("lease", o.obj.Name))
			if got, err = l.leases().Create(ctx, l.desired(o.subnet, fam, attrs, time.Now()), metav1.CreateOptions{}); err != nil {
				return fmt.Errorf("creating Lease %s/%s again: %w", o.obj.Namespace, o.obj.Name, err)
			}
		default:
			return fmt.Errorf("renewing Lease %s/%s: %w", o.obj.Namespace, o.obj.Name, err)
		}
		o.obj, o.renewed = got, time.Now()
		return nil
	})
}
