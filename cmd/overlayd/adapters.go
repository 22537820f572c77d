package main

import (
	"go.uber.org/zap"

	"github.com/overlayd/overlayd/backend"
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

func (r *trafficRules) Ensure(net *subnet.Config, lease subnet.Lease) error {
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

// udpDatapath adapts pkg/udptunnel to the daemon.
type udpDatapath struct{ t *udptunnel.Tunnel }

func newDatapath(log *zap.Logger) *udpDatapath { return &udpDatapath{t: udptunnel.New(log)} }

func (u *udpDatapath) Ensure(want *backend.UDPTunnel) error {
	if want == nil {
		return u.t.Ensure(nil)
	}
	return u.t.Ensure(&udptunnel.Spec{Device: want.Device, Port: want.Port, Peers: want.Peers})
}

func (u *udpDatapath) Close() error { return u.t.Close() }
