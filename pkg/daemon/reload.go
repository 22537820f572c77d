package daemon

import (
	"bytes"
	"encoding/json"
	"time"

	"go.uber.org/zap"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/netconf"
)

// Drain timing of a backend the node no longer uses: its receiving side
// stays until its devices have carried no traffic for drainQuiet (peers that
// had not yet seen the switch have caught up), and at most drainMax.
const (
	drainQuiet = 3 * time.Second
	drainMax   = 2 * time.Minute
	drainCheck = time.Second
)

// Reload offers new net-conf.json content. It is checked at once (the error
// is returned and nothing changes when it is invalid or cannot be applied
// live) and applied by the loop.
func (d *Daemon) Reload(data []byte) error {
	cfg, b, err := backend.Load(data)
	if err != nil {
		configReloads.WithLabelValues("invalid").Inc()
		return err
	}
	if err := netconf.CheckLiveChange(d.startNet, cfg); err != nil {
		configReloads.WithLabelValues("refused").Inc()
		return err
	}
	d.pending.Store(&pendingConfig{net: cfg, backend: b, raw: cfg.Backend})
	d.queue.Add(syncKey)
	return nil
}

type pendingConfig struct {
	net     *netconf.Config
	backend backend.Backend
	raw     json.RawMessage
}

// applyPending switches to a configuration offered by Reload. The old
// backend's receiving side is kept, draining, until no peer sends with it.
func (d *Daemon) applyPending() {
	p := d.pending.Swap(nil)
	if p == nil {
		return
	}
	old := d.cfg.Backend
	if old.Type() == p.backend.Type() && bytes.Equal(d.ownRaw, p.raw) {
		configReloads.WithLabelValues("unchanged").Inc()
		return
	}
	d.log.Info("applying new network configuration", zap.String("from", old.Type()), zap.String("to", p.backend.Type()),
		zap.ByteString("backend", p.raw))
	d.drains = append(d.drains, &drain{backend: old, started: time.Now()})
	d.cfg.Backend = p.backend
	d.ownRaw = p.raw
	d.cfg.Net = p.net
	d.backends = map[string]backend.Backend{p.backend.Type(): p.backend}
	d.peerCache = nil // computed with the old backends
	if old.Type() != p.backend.Type() {
		// Peers still on the old type are reached with its last settings.
		d.backends[old.Type()] = old
	}
	configReloads.WithLabelValues("applied").Inc()
	d.normal(EventConfigApplied, "network configuration applied: backend %s -> %s %s", old.Type(), p.backend.Type(), p.raw)
	if err := d.writeSubnetFile(); err != nil {
		d.log.Error("rewriting subnet file", zap.Error(err))
	}
}

// drain is a backend this node no longer uses, kept able to receive.
type drain struct {
	backend    backend.Backend
	started    time.Time
	published  time.Time // when the new backend was published; zero: not yet
	rx         uint64
	lastRx     time.Time
	quietSince time.Time
}

// addDrains adds the receiving side of draining backends to st. A drain
// whose state conflicts with the new configuration (the same device wanted
// with other settings) ends at once: the new configuration wins.
func (d *Daemon) addDrains(st *backend.State) {
	kept := d.drains[:0]
	for _, dr := range d.drains {
		var local backend.State
		if err := dr.backend.Local(d.node, &local); err != nil {
			d.log.Info("old backend cannot be kept while draining", zap.String("backend", dr.backend.Type()), zap.Error(err))
			continue
		}
		if len(local.Links) == 0 && local.UDP == nil {
			continue // nothing receives (host-gw): nothing to drain
		}
		merged := st.Clone()
		if err := merged.Merge(local); err != nil {
			d.log.Info("old backend's devices conflict with the new configuration; not draining", zap.String("backend", dr.backend.Type()), zap.Error(err))
			continue
		}
		*st = merged
		kept = append(kept, dr)
	}
	d.drains = kept
}

// checkDrains ends drains whose devices have been quiet long enough, and
// keeps the loop ticking while any remain.
func (d *Daemon) checkDrains() {
	if len(d.drains) == 0 {
		return
	}
	now := time.Now()
	kept := d.drains[:0]
	for _, dr := range d.drains {
		if dr.published.IsZero() {
			kept = append(kept, dr)
			continue
		}
		var local backend.State
		_ = dr.backend.Local(d.node, &local)
		var rx uint64
		for _, l := range local.Links {
			n, _ := d.cfg.Kernel.RxPackets(l.Name)
			rx += n
		}
		if rx != dr.rx || dr.quietSince.IsZero() {
			dr.rx, dr.quietSince = rx, now
		}
		switch {
		case now.Sub(dr.quietSince) >= drainQuiet:
			d.log.Info("old backend drained: no traffic received with it any more", zap.String("backend", dr.backend.Type()),
				zap.Duration("after", now.Sub(dr.started).Round(time.Millisecond)))
		case now.Sub(dr.started) >= drainMax:
			d.log.Warn("old backend still receiving traffic; removing it anyway", zap.String("backend", dr.backend.Type()),
				zap.Duration("after", drainMax))
		default:
			kept = append(kept, dr)
		}
	}
	d.drains = kept
	if len(d.drains) > 0 {
		d.queue.AddAfter(syncKey, drainCheck)
	} else {
		d.queue.Add(syncKey) // remove what the drains kept
	}
}
