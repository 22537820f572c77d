package kube

import (
	"context"
	"errors"
	"testing"
	"time"

	coordv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/overlayd/overlayd/test/controlplane"
)

// TestLeaseWritesAfterConflicts: writes from a stale copy of a Lease read
// it again and retry; a Lease another node holds now is not reclaimed and,
// when renewed, is a lostError; a deleted one is created again.
func TestLeaseWritesAfterConflicts(t *testing.T) {
	c := startCluster(t, controlplane.Options{})
	ctx := context.Background()
	const ns = "lease-conflicts"
	createNamespace(t, c, ns)
	net := mustNet(t, `{"Network": "10.240.0.0/16", "LeaseMode": "lease"}`)
	m, err := newManager(Config{Client: c.admin, NodeName: "self", Net: net, LeaseNamespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	l := m.mode.(*leaseMode)
	node := createNode(t, c.admin, "self", nil, nil)
	l.nodeRef = metav1.OwnerReference{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}
	attrs := vxlanAttrs("198.18.9.1", "0a:58:0a:f0:00:01")
	api := c.admin.CoordinationV1().Leases(ns)

	// stale creates the Lease of subnet s held by self, then changes it
	// behind the agent's back (holder), returning the agent's stale copy.
	stale := func(s, holder string) (*coordv1.Lease, func() *coordv1.Lease) {
		t.Helper()
		p := pfx(s)
		obj, err := api.Create(ctx, l.desired(p, familyIPv4, attrs, time.Now()), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		changed := obj.DeepCopy()
		changed.Spec.HolderIdentity = ptr.To(holder)
		if _, err := api.Update(ctx, changed, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		return obj, func() *coordv1.Lease { return getLease(t, c, ns, p) }
	}

	t.Run("reclaim", func(t *testing.T) {
		old, now := stale("10.240.1.0/24", "self")
		got, err := l.reclaim(ctx, old, pfx("10.240.1.0/24"), familyIPv4, attrs)
		if err != nil || got == nil || got.ResourceVersion != now().ResourceVersion {
			t.Errorf("reclaiming a stale copy of an own Lease: %v, %v; want it renewed", got, err)
		}
		old, now = stale("10.240.2.0/24", "other")
		if got, err := l.reclaim(ctx, old, pfx("10.240.2.0/24"), familyIPv4, attrs); got != nil || err != nil {
			t.Errorf("reclaiming a Lease another node holds now: %v, %v; want nil, nil", got, err)
		}
		if h := ptr.Deref(now().Spec.HolderIdentity, ""); h != "other" {
			t.Errorf("holder %q after the refused reclaim, want other", h)
		}
		old, _ = stale("10.240.3.0/24", "self")
		if err := api.Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		// Leases allow create on update: the write brings it back.
		if got, err := l.reclaim(ctx, old, pfx("10.240.3.0/24"), familyIPv4, attrs); err != nil || got == nil || got.UID == old.UID {
			t.Errorf("reclaiming a deleted Lease: %v, %v; want it created again", got, err)
		}
	})

	t.Run("renew", func(t *testing.T) {
		old, now := stale("10.240.4.0/24", "self")
		o := &ownLease{obj: old, subnet: pfx("10.240.4.0/24")}
		if err := l.renew(ctx, familyIPv4, o, attrs); err != nil || o.obj.ResourceVersion != now().ResourceVersion || o.renewed.IsZero() {
			t.Errorf("renewing from a stale copy: %v; own %+v", err, o)
		}
		old, _ = stale("10.240.5.0/24", "intruder")
		o = &ownLease{obj: old, subnet: pfx("10.240.5.0/24")}
		var lost *lostError
		if err := l.renew(ctx, familyIPv4, o, attrs); !errors.As(err, &lost) {
			t.Errorf("renewing a Lease another node holds now: %v, want a lostError", err)
		}
		old, now = stale("10.240.6.0/24", "self")
		if err := api.Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		o = &ownLease{obj: old, subnet: pfx("10.240.6.0/24")}
		if err := l.renew(ctx, familyIPv4, o, attrs); err != nil || now().UID == old.UID || ptr.Deref(now().Spec.HolderIdentity, "") != "self" {
			t.Errorf("renewing a deleted Lease: %v; want it created again, held by self", err)
		}
	})
}
