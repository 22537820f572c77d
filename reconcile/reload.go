package reconcile

import (
	"bytes"
	"encoding/json"

	"go.uber.org/zap"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/netconf"
)

// Reload offers new net-conf.json content. It is checked at once (the error
// is returned and nothing changes when it is invalid or cannot be applied
// live) and applied by the next pass.
func (l *Loop) Reload(data []byte) error {
	cfg, b, err := backend.Load(data)
	if err != nil {
		configReloads.WithLabelValues("invalid").Inc()
		return err
	}
	if err := netconf.CheckLiveChange(l.startNet, cfg); err != nil {
		configReloads.WithLabelValues("refused").Inc()
		return err
	}
	l.pending.Store(&pendingConfig{net: cfg, backend: b, raw: cfg.Backend})
	l.markFull()
	return nil
}

type pendingConfig struct {
	net     *netconf.Config
	backend backend.Backend
	raw     json.RawMessage
}

// applyPending switches to a configuration offered by Reload. The old
// backend's receiving side is kept, draining, until no peer sends with it.
func (l *Loop) applyPending() {
	p := l.pending.Swap(nil)
	if p == nil {
		return
	}
	old := l.cfg.Backend
	if old.Type() == p.backend.Type() && bytes.Equal(l.ownRaw, p.raw) {
		// The same backend: only what needs no switch may differ (the
		// rules' mode, EnableNFTables), and the pass applies it.
		if p.net.EnableNFTables == l.cfg.Net.EnableNFTables {
			configReloads.WithLabelValues("unchanged").Inc()
			return
		}
		l.log.Info("applying new network configuration", zap.Bool("enableNFTables", p.net.EnableNFTables))
		l.cfg.Net = p.net
		configReloads.WithLabelValues("applied").Inc()
		l.normal(EventConfigApplied, "network configuration applied: EnableNFTables %t", p.net.EnableNFTables)
		return
	}
	l.log.Info("applying new network configuration", zap.String("from", old.Type()), zap.String("to", p.backend.Type()),
		zap.ByteString("backend", p.raw))
	l.startDrain(old)
	l.cfg.Backend = p.backend
	l.ownRaw = p.raw
	l.cfg.Net = p.net
	// Peers still on the old type are reached with its last settings.
	l.peers.reset(p.backend, old)
	configReloads.WithLabelValues("applied").Inc()
	l.normal(EventConfigApplied, "network configuration applied: backend %s -> %s %s", old.Type(), p.backend.Type(), p.raw)
	if err := l.writeSubnetFile(); err != nil {
		l.log.Error("rewriting subnet file", zap.Error(err))
	}
}
