package reconcile

import (
	"time"

	"go.uber.org/zap"

	"github.com/overlayd/overlayd/backend"
)

// Drain timing of a backend the node no longer uses: its receiving side
// stays until its devices have carried no traffic for drainQuiet (peers that
// had not yet seen the switch have caught up), and at most drainMax.
const (
	drainQuiet = 3 * time.Second
	drainMax   = 2 * time.Minute
	drainCheck = time.Second
)

// drain is a backend this node no longer uses, kept able to receive.
type drain struct {
	backend    backend.Backend
	started    time.Time
	published  time.Time // when the new backend was published; zero: not yet
	rx         uint64
	quietSince time.Time
}

// startDrain keeps old's receiving side until no peer sends with it.
func (l *Loop) startDrain(old backend.Backend) {
	l.drains = append(l.drains, &drain{backend: old, started: time.Now()})
}

// drainsPublished starts the quiet clock of drains waiting for the new
// backend to be published.
func (l *Loop) drainsPublished(now time.Time) {
	for _, dr := range l.drains {
		if dr.published.IsZero() {
			dr.published = now
		}
	}
}

// addDrains adds the receiving side of draining backends to st. A drain
// whose state conflicts with the new configuration (the same device wanted
// with other settings) ends at once: the new configuration wins.
func (l *Loop) addDrains(st *backend.State) {
	kept := l.drains[:0]
	for _, dr := range l.drains {
		var local backend.State
		if err := dr.backend.Local(l.node, &local); err != nil {
			l.log.Info("old backend cannot be kept while draining", zap.String("backend", dr.backend.Type()), zap.Error(err))
			continue
		}
		if len(local.Links) == 0 && len(local.Datapaths) == 0 {
			continue // nothing receives (host-gw): nothing to drain
		}
		merged := st.Clone()
		if err := merged.Merge(local); err != nil {
			l.log.Info("old backend's devices conflict with the new configuration; not draining", zap.String("backend", dr.backend.Type()), zap.Error(err))
			continue
		}
		*st = merged
		kept = append(kept, dr)
	}
	l.drains = kept
}

// checkDrains ends drains whose devices have been quiet long enough, and
// keeps the loop ticking while any remain.
func (l *Loop) checkDrains() {
	if len(l.drains) == 0 {
		return
	}
	now := time.Now()
	kept := l.drains[:0]
	for _, dr := range l.drains {
		if dr.published.IsZero() {
			kept = append(kept, dr)
			continue
		}
		var local backend.State
		_ = dr.backend.Local(l.node, &local)
		var rx uint64
		for _, link := range local.Links {
			n, _ := l.cfg.Kernel.RxPackets(link.Name)
			rx += n
		}
		if rx != dr.rx || dr.quietSince.IsZero() {
			dr.rx, dr.quietSince = rx, now
		}
		switch {
		case now.Sub(dr.quietSince) >= drainQuiet:
			l.log.Info("old backend drained: no traffic received with it any more", zap.String("backend", dr.backend.Type()),
				zap.Duration("after", now.Sub(dr.started).Round(time.Millisecond)))
		case now.Sub(dr.started) >= drainMax:
			l.log.Warn("old backend still receiving traffic; removing it anyway", zap.String("backend", dr.backend.Type()),
				zap.Duration("after", drainMax))
		default:
			kept = append(kept, dr)
		}
	}
	l.drains = kept
	l.full.Store(true) // passes while draining are full ones
	if len(l.drains) > 0 {
		l.queue.AddAfter(syncKey, drainCheck)
	} else {
		l.queue.Add(syncKey) // remove what the drains kept
	}
}
