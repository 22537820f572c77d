package kube

import (
	"k8s.io/client-go/tools/cache"
)

// The informer's store is the one store of records: each mode's transform
// reduces an object to what the lease store keeps of it (podCIDR mode: the
// record itself; lease mode: a storedLease holding the record), and
// mode.toRecord reads the record back without parsing anything again.

// handlers mark the state dirty when an object's record changed: a Node's
// heartbeat or a Lease's renewal changes nothing resolve looks at.
func (m *manager) handlers() cache.ResourceEventHandlerFuncs {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if m.mode.toRecord(obj) != nil {
				m.markDirty()
			}
		},
		UpdateFunc: func(old, obj any) {
			if !sameRecord(m.mode.toRecord(old), m.mode.toRecord(obj)) {
				m.markDirty()
			}
		},
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if m.mode.toRecord(obj) != nil {
				m.markDirty()
			}
		},
	}
}

func sameRecord(a, b *record) bool {
	return (a == nil && b == nil) || (a != nil && b != nil && a.equal(b))
}

func (m *manager) markDirty() {
	select {
	case m.dirty <- struct{}{}:
	default:
	}
}

// records returns the record of every cached object that claims something.
func (m *manager) records() []*record {
	objs := m.informer.GetStore().List()
	recs := make([]*record, 0, len(objs))
	for _, obj := range objs {
		if r := m.mode.toRecord(obj); r != nil {
			recs = append(recs, r)
		}
	}
	return recs
}

// record returns the current record of an object, nil if none.
func (m *manager) record(key string) *record {
	obj, exists, _ := m.informer.GetStore().GetByKey(key)
	if !exists {
		return nil
	}
	return m.mode.toRecord(obj)
}
