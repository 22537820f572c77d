package kube

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	coordv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	typedcoordv1 "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/utils/ptr"

	"github.com/overlayd/overlayd/subnet"
)

// The Lease object of a subnet: its name, when it expires, and how this
// agent writes it.

// leaseName is the Lease object's name for a subnet: the address with "."
// and ":" written as "-", then the length ("subnet-10-244-3-0-24",
// "subnet-fd00-10-244-3---64"). The mapping is one to one.
func leaseName(p netip.Prefix) string {
	a := strings.NewReplacer(".", "-", ":", "-").Replace(p.Addr().String())
	return fmt.Sprintf("subnet-%s-%d", a, p.Bits())
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

// write replaces a Lease with this agent's version, guarded by cur's
// resourceVersion. takeover counts a transition and restarts acquireTime.
func (l *leaseMode) write(ctx context.Context, cur *coordv1.Lease, p netip.Prefix, fam string, attrs subnet.LeaseAttrs, takeover bool) (*coordv1.Lease, error) {
	want := l.desired(p, fam, attrs, time.Now())
	want.ResourceVersion = cur.ResourceVersion
	transitions := ptr.Deref(cur.Spec.LeaseTransitions, 0)
	if takeover || ptr.Deref(cur.Spec.HolderIdentity, "") != l.m.cfg.NodeName {
		transitions++
	} else if cur.Spec.AcquireTime != nil {
		want.Spec.AcquireTime = cur.Spec.AcquireTime.DeepCopy()
	}
	want.Spec.LeaseTransitions = &transitions
	return l.leases().Update(ctx, want, metav1.UpdateOptions{})
}

// leases is the API of the Lease objects, all in the lease namespace.
func (l *leaseMode) leases() typedcoordv1.LeaseInterface {
	return l.m.cfg.Client.CoordinationV1().Leases(l.m.cfg.LeaseNamespace)
}

// get reads a Lease from the API server, past the cache.
func (l *leaseMode) get(ctx context.Context, name string) (*coordv1.Lease, error) {
	le, err := l.leases().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading Lease %s/%s: %w", l.m.cfg.LeaseNamespace, name, err)
	}
	return le, nil
}
