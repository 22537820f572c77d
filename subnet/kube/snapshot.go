package kube

import (
	"slices"
	"strings"

	"go.uber.org/zap"

	"github.com/overlayd/overlayd/pkg/metrics"
)

// resolveNow recomputes the snapshot from the records and the own Node's
// address annotations, reports newly skipped peers and notifies Changed if
// the peers or the addresses differ.
func (m *manager) resolveNow() {
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
