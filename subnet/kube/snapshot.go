package kube

import (
	"slices"
	"strings"

	"go.uber.org/zap"

	"github.com/overlayd/overlayd/pkg/metrics"
)

// resolveDirty brings the snapshot up to date with what changed: the
// changed peers alone when only what they publish changed, or they were
// added or deleted without a bearing on other records, else every record.
func (m *manager) resolveDirty() {
	c := m.takeChanges()
	if !c.all && c.any() && m.resolveChanged(c) {
		return
	}
	m.resolveNow()
}

// resolveChanged takes the current records of c.keys, each of a peer that
// only changed what it publishes, and the new records of c.added into the
// snapshot, takes the peers of the deleted records c.gone out of it, and
// notifies Changed: an annotation changed on one Node, or one Node added or
// deleted, costs that peer, not a resolve of every record. False, changing
// nothing, when one of them is not a peer's record as it stands in the
// snapshot (a skipped one, the own node's), or a new or deleted one may
// bear on other records (resolveAdded, resolveGone): resolveNow decides
// then.
func (m *manager) resolveChanged(c changes) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.synced {
		return false
	}
	type edit struct {
		i      int
		second bool
		r      *record
	}
	var edits []edit
	for key := range c.keys {
		r := m.record(key)
		if r == nil || r.node == m.cfg.NodeName {
			return false
		}
		i, found := m.res.find(r.node)
		if !found {
			return false
		}
		p := m.res.peers[i]
		switch {
		case p.first.key == key && sameClaim(p.first, r):
			edits = append(edits, edit{i: i, r: r})
		case p.second != nil && p.second.key == key && sameClaim(p.second, r):
			edits = append(edits, edit{i: i, second: true, r: r})
		default:
			return false
		}
	}
	removed := map[int]bool{}
	for key, node := range c.gone {
		i, ok := m.resolveGone(key, node)
		if !ok {
			return false
		}
		removed[i] = true
	}
	var added []*record
	if len(c.added) > 0 {
		var ok bool
		if added, ok = m.resolveAdded(c.added); !ok {
			return false
		}
	}
	if m.changedPeers == nil {
		m.changedPeers = map[string]bool{}
	}
	for _, e := range edits {
		if e.second {
			m.res.peers[e.i].second = e.r
		} else {
			m.res.peers[e.i].first = e.r
		}
		m.changedPeers[e.r.node] = true
	}
	if len(removed)+len(added) > 0 {
		// A new slice: a resolution handed out (state) keeps its own.
		kept := make([]peer, 0, len(m.res.peers)-len(removed)+len(added))
		for i, p := range m.res.peers {
			if removed[i] {
				m.changedPeers[p.first.node] = true
			} else {
				kept = append(kept, p)
			}
		}
		for _, r := range added {
			kept = append(kept, peer{first: r})
			m.changedPeers[r.node] = true
		}
		if len(added) > 0 {
			slices.SortFunc(kept, func(a, b peer) int { return strings.Compare(a.first.node, b.first.node) })
		}
		m.res.peers = kept
		leasesGauge.Set(float64(len(kept)))
	}
	close(m.wake)
	m.wake = make(chan struct{})
	resolves.WithLabelValues("changed").Inc()
	select {
	case m.changed <- struct{}{}:
	default:
	}
	return true
}

// resolveGone returns the index in the snapshot of the peer whose one
// record, key, was deleted, if taking it out is all a resolve of every
// record would do: the record is still gone, no other record of its node
// exists, and it held nothing another record (a skipped peer's, the own
// node's) lost to it. Called with mu held.
func (m *manager) resolveGone(key, node string) (int, bool) {
	if node == m.cfg.NodeName || m.record(key) != nil || m.res.ownProblem.holder == node {
		return 0, false
	}
	i, found := m.res.find(node)
	if !found {
		return 0, false
	}
	if p := m.res.peers[i]; p.first.key != key || p.second != nil {
		return 0, false
	}
	for _, s := range m.res.skipped {
		if s.problem.holder == node || s.record.node == node {
			return 0, false
		}
	}
	return i, true
}

// resolveAdded returns the new records of keys if each is, as a resolve
// of every record would find, a peer on its own: a complete, well-formed
// claim inside the network, of a node that is neither this one nor
// otherwise known, overlapping no other record's claim (so that neither
// the earliest-claim rule nor a tie on it decides anything). Called with
// mu held.
func (m *manager) resolveAdded(keys map[string]bool) ([]*record, bool) {
	var added []*record
	for key := range keys {
		r := m.record(key)
		if r == nil || r.node == m.cfg.NodeName || !r.subnetProblem().ok() || !outsideNetwork(m.net, r).ok() {
			return nil, false
		}
		if _, found := m.res.find(r.node); found {
			return nil, false
		}
		if used, subnetP, attrsP := merge(m.net, []*record{r}); !used[0] || !subnetP.ok() || !attrsP.ok() {
			return nil, false
		}
		added = append(added, r)
	}
	for _, o := range m.records() {
		for _, r := range added {
			if o.key == r.key {
				continue
			}
			// (Overlaps is false for an absent prefix.)
			if o.node == r.node || o.v4.Overlaps(r.v4) || o.v6.Overlaps(r.v6) {
				return nil, false
			}
		}
	}
	return added, true
}

// resolveNow recomputes the snapshot from the records and the own Node's
// address annotations, reports newly skipped peers and notifies Changed if
// the peers or the addresses differ.
func (m *manager) resolveNow() {
	resolves.WithLabelValues("all").Inc()
	res := resolve(m.net, m.cfg.NodeName, m.records())
	var bad []string
	res.node, bad = m.keys.nodeAddresses(m.ownAnnotations())
	res.nodeBad = strings.Join(bad, "; ")
	m.report(res)

	m.mu.Lock()
	if res.nodeBad != m.res.nodeBad && res.nodeBad != "" {
		m.log.Warn("ignoring malformed public address annotations on this node", zap.String("detail", res.nodeBad))
		m.cfg.Events.Warning("BadAnnotation", "ignoring malformed annotations: %s", res.nodeBad)
	}
	changed := !m.synced || res.node != m.res.node || !slices.EqualFunc(m.res.peers, res.peers, samePeer)
	m.res, m.synced = res, true
	m.changedAll = m.changedAll || changed
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
			m.cfg.Events.WarningOn(s.record.node, "SubnetConflict", "%s: refused; node %s keeps it", s.problem.detail, m.cfg.NodeName)
		}
	}
	for key := range m.reported {
		if _, still := res.skipped[key]; !still {
			delete(m.reported, key)
			m.log.Debug("peer no longer skipped", zap.String("object", key))
		}
	}
}
