package main

import (
	"bytes"
	"encoding/json"
	"os"

	"go.uber.org/zap"

	"github.com/google/renameio/v2"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/pkg/rules"
	"github.com/overlayd/overlayd/pkg/udptunnel"
	"github.com/overlayd/overlayd/subnet"
)

// trafficRules adapts pkg/rules to the daemon: the rules follow the flags,
// the network and this node's lease.
type trafficRules struct {
	m            *rules.Manager
	ipMasq       bool
	forwardRules bool
}

func newRules(o *options, log *zap.Logger) (*trafficRules, error) {
	m, err := rules.New(log)
	if err != nil {
		return nil, err
	}
	return &trafficRules{m: m, ipMasq: o.ipMasq, forwardRules: o.iptablesForwardRules}, nil
}

func (r *trafficRules) Ensure(net *netconf.Config, lease subnet.Lease) error {
	cfg := rules.Config{IPMasq: r.ipMasq, ForwardRules: r.forwardRules}
	if net.EnableIPv4 {
		cfg.Network, cfg.Subnet = net.Network, lease.Subnet
	}
	if net.EnableIPv6 {
		cfg.IPv6Network, cfg.IPv6Subnet = net.IPv6Network, lease.IPv6Subnet
	}
	_, err := r.m.Ensure(cfg)
	return err
}

// udpDatapath adapts pkg/udptunnel to the daemon, and keeps a copy of the
// last applied peer table on disk for a warm start.
type udpDatapath struct {
	t     *udptunnel.Tunnel
	cache string // file holding the last applied spec
	saved []byte
	log   *zap.Logger
}

func newDatapath(cache string, log *zap.Logger) *udpDatapath {
	return &udpDatapath{t: udptunnel.New(log), cache: cache, log: log}
}

// WarmStart re-attaches the datapath with the peer table the previous run
// applied, before anything else starts: the userspace datapath forwards
// nothing while no agent runs, so a restart must resume it within
// milliseconds rather than after the lease store has synced. The first
// reconcile then replaces the table with the current one (or stops the
// datapath). A missing or unusable cache only means a cold start.
func (u *udpDatapath) WarmStart() {
	data, err := os.ReadFile(u.cache)
	if err != nil {
		return
	}
	var spec udptunnel.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		u.log.Info("ignoring unreadable udp datapath cache", zap.String("path", u.cache), zap.Error(err))
		return
	}
	if err := u.t.Ensure(&spec); err != nil {
		u.log.Info("no warm start of the udp datapath", zap.String("path", u.cache), zap.Error(err))
		return
	}
	u.saved = data
	u.log.Info("udp datapath resumed from the previous run's peer table", zap.Int("peers", len(spec.Peers)))
}

func (u *udpDatapath) Ensure(want *backend.UDPTunnel) error {
	if want == nil {
		if err := u.t.Ensure(nil); err != nil {
			return err
		}
		if u.saved != nil || fileExists(u.cache) {
			os.Remove(u.cache)
			u.saved = nil
		}
		return nil
	}
	spec := &udptunnel.Spec{Device: want.Device, Port: want.Port, Peers: want.Peers, Sources: want.Sources}
	if err := u.t.Ensure(spec); err != nil {
		return err
	}
	data, err := json.Marshal(spec)
	if err != nil || bytes.Equal(data, u.saved) {
		return err
	}
	if err := renameio.WriteFile(u.cache, data, 0o600); err != nil {
		u.log.Warn("cannot save the udp peer table for a warm start", zap.Error(err))
		return nil
	}
	u.saved = data
	return nil
}

func (u *udpDatapath) Close() error { return u.t.Close() }

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
