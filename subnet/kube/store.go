package kube

import (
	"maps"

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
			if r := m.mode.toRecord(obj); r != nil {
				m.markAdded(r.key)
			}
		},
		UpdateFunc: func(old, obj any) {
			was, is := m.mode.toRecord(old), m.mode.toRecord(obj)
			switch {
			case sameRecord(was, is):
			case was != nil && is != nil && sameClaim(was, is):
				m.markAttrsChanged(is.key)
			default:
				m.markDirty()
			}
		},
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if r := m.mode.toRecord(obj); r != nil {
				m.markGone(r)
			}
		},
	}
}

func sameRecord(a, b *record) bool {
	return (a == nil && b == nil) || (a != nil && b != nil && a.equal(b))
}

// sameClaim reports whether two records of one object claim the same and
// win or lose the same way: all that resolve's arbitration looks at.
// Records that differ only in what they publish change one peer's lease.
func sameClaim(a, b *record) bool {
	return a.key == b.key && a.name == b.name && a.node == b.node && a.created.Equal(b.created) &&
		a.v4 == b.v4 && a.v6 == b.v6 && a.subnetProblem() == b.subnetProblem() && a.attrsProblem() == b.attrsProblem() &&
		maps.Equal(a.ours, b.ours)
}

// markDirty asks for a resolve of every record.
func (m *manager) markDirty() {
	m.changesMu.Lock()
	m.resolveAll = true
	m.changesMu.Unlock()
	m.wakeResolve()
}

// markAttrsChanged asks for the record of key, whose claim is unchanged,
// to be taken into the snapshot (resolveChanged).
func (m *manager) markAttrsChanged(key string) {
	m.changesMu.Lock()
	if m.attrsChanged == nil {
		m.attrsChanged = map[string]bool{}
	}
	m.attrsChanged[key] = true
	m.changesMu.Unlock()
	m.wakeResolve()
}

// maxAdded is the most new records taken into the snapshot one by one; more
// (the initial list) are resolved with every record.
const maxAdded = 256

// markAdded asks for the new record of key to be taken into the snapshot
// (resolveChanged).
func (m *manager) markAdded(key string) {
	m.changesMu.Lock()
	switch {
	case m.resolveAll:
	case len(m.added) == maxAdded:
		m.resolveAll, m.added = true, nil
	default:
		if m.added == nil {
			m.added = map[string]bool{}
		}
		m.added[key] = true
	}
	m.changesMu.Unlock()
	m.wakeResolve()
}

// markGone asks for the deleted record r to be taken out of the snapshot
// (resolveChanged).
func (m *manager) markGone(r *record) {
	m.changesMu.Lock()
	if m.gone == nil {
		m.gone = map[string]string{}
	}
	m.gone[r.key] = r.node
	m.changesMu.Unlock()
	m.wakeResolve()
}

// changes are what changed since the lease store last resolved: every
// record (all), or the records of keys in what they publish alone, the new
// records of added and the deleted records of gone (key -> node).
type changes struct {
	all         bool
	keys, added map[string]bool
	gone        map[string]string
}

func (c changes) any() bool { return c.all || len(c.keys)+len(c.added)+len(c.gone) > 0 }

// takeChanges returns what changed since the last call.
func (m *manager) takeChanges() changes {
	m.changesMu.Lock()
	defer m.changesMu.Unlock()
	c := changes{all: m.resolveAll, keys: m.attrsChanged, added: m.added, gone: m.gone}
	m.attrsChanged, m.added, m.gone, m.resolveAll = nil, nil, nil, false
	return c
}

func (m *manager) wakeResolve() {
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
