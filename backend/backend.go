// Package backend defines what a backend is to overlayd: a small,
// declarative mapping from configuration and leases to desired state. A
// backend sets up nothing itself and watches nothing; the daemon loop
// applies what it declares and repairs it.
package backend

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"

	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/subnet"
)

// Node is what a backend knows about the node it runs on.
type Node struct {
	Name        string
	Lease       subnet.Lease // this node's own lease
	Network     netip.Prefix // cluster IPv4 network (invalid when IPv4 is off)
	IPv6Network netip.Prefix
	Underlay    *ip.External // the interface traffic between nodes uses
}

// Backend maps configuration and leases to desired state.
type Backend interface {
	// Type is the name in net-conf.json and in the backend-type annotation.
	Type() string
	// MTU is the MTU pods get with this backend (FLANNEL_MTU in subnet.env).
	MTU(n Node) int
	// Data is the backend-data this node publishes for its peers; nil for none.
	Data(n Node) (json.RawMessage, error)
	// Local adds what this node needs to receive traffic of this backend.
	Local(n Node, st *State) error
	// Peer adds what this node needs to send traffic to peer, which publishes
	// this backend's type. A *SkipError means the peer cannot be reached
	// this way; the daemon logs and counts it and carries on.
	Peer(n Node, peer subnet.Lease, st *State) error
}

// State is the desired state of the whole node.
type State struct {
	kernel.State
	UDP *UDPTunnel // the userspace datapath, when a udp backend needs it
}

// UDPTunnel is the desired userspace udp datapath.
type UDPTunnel struct {
	Device string
	Port   int
	Peers  map[netip.Prefix]netip.AddrPort // peer pod subnet -> peer public IP and port
	// Sources are the public IPs of every peer: any of them may send to
	// this node over udp, whatever this node uses to reach it.
	Sources []netip.Addr
}

// SkipError says a peer is skipped, and why (Reason is a metric label).
type SkipError struct {
	Reason string
	Err    error
}

func (e *SkipError) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *SkipError) Unwrap() error { return e.Err }

// Skip returns a *SkipError.
func Skip(reason, format string, args ...any) error {
	return &SkipError{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// Reasons a peer is skipped.
const (
	SkipBadBackendData = "bad_backend_data"
	SkipNotOnLink      = "not_on_link"
	SkipUnknownBackend = "unknown_backend"
)

// IsSkip reports whether err says the peer is to be skipped.
func IsSkip(err error) (*SkipError, bool) {
	var s *SkipError
	ok := errors.As(err, &s)
	return s, ok
}

// Factory builds a backend from its net-conf.json Backend object, checking
// every key. A nil object means all defaults.
type Factory func(config json.RawMessage) (Backend, error)

var (
	registryMu sync.RWMutex
	registry   = map[string]Factory{}
)

// Register makes a backend type available; backends call it from init.
func Register(typ string, f Factory) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[typ]; dup {
		panic("backend: " + typ + " registered twice")
	}
	registry[typ] = f
}

// Types lists the registered backend types, sorted.
func Types() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	out := make([]string, 0, len(registry))
	for t := range registry {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// New builds the backend of type typ from its configuration object.
func New(typ string, config json.RawMessage) (Backend, error) {
	registryMu.RLock()
	f, ok := registry[typ]
	registryMu.RUnlock()
	if !ok {
		return nil, &netconf.Error{Key: "Backend.Type", Msg: fmt.Sprintf("unknown backend type %q (known: %s)", typ, strings.Join(Types(), ", "))}
	}
	return f(config)
}

// Load parses and validates a whole net-conf.json (netconf.Load), the
// backend's own options included, and returns the configured backend.
func Load(data []byte) (*netconf.Config, Backend, error) {
	cfg, err := netconf.Load(data)
	if err != nil {
		return nil, nil, err
	}
	b, err := New(cfg.BackendType, cfg.Backend)
	if err != nil {
		return nil, nil, err
	}
	return cfg, b, nil
}

// VTEPAddr is the address a node uses on its tunnel device: the network
// address of its subnet (10.244.3.0 for 10.244.3.0/24), as flannel does, so
// it never collides with a pod address.
func VTEPAddr(subnet netip.Prefix) netip.Addr { return subnet.Masked().Addr() }

// OnLink reports whether peer's public IP is directly reachable on the
// underlay's network (same L2 segment), so it can be a route's next hop.
func OnLink(n Node, peerIP netip.Addr) bool {
	if n.Underlay == nil {
		return false
	}
	for _, p := range n.Underlay.Iface.Addrs {
		if p.Masked().Contains(peerIP) && p.Bits() < p.Addr().BitLen() {
			return true
		}
	}
	return false
}

// Clone returns a copy of s that shares nothing mutable with it.
func (s State) Clone() State {
	c := State{State: kernel.State{
		Links:  append([]kernel.Link(nil), s.Links...),
		Routes: append([]kernel.Route(nil), s.Routes...),
		Neighs: append([]kernel.Neigh(nil), s.Neighs...),
		FDB:    append([]kernel.FDBEntry(nil), s.FDB...),
	}}
	if s.UDP != nil {
		u := *s.UDP
		u.Sources = append([]netip.Addr(nil), s.UDP.Sources...)
		u.Peers = make(map[netip.Prefix]netip.AddrPort, len(s.UDP.Peers))
		for k, v := range s.UDP.Peers {
			u.Peers[k] = v
		}
		c.UDP = &u
	}
	return c
}

// Merge adds o to s: links shared by both must agree, udp peers are joined.
func (s *State) Merge(o State) error {
	for _, l := range o.Links {
		if err := s.AddLink(l); err != nil {
			return err
		}
	}
	s.Routes = append(s.Routes, o.Routes...)
	s.Neighs = append(s.Neighs, o.Neighs...)
	s.FDB = append(s.FDB, o.FDB...)
	if o.UDP != nil {
		if s.UDP == nil {
			s.UDP = &UDPTunnel{Device: o.UDP.Device, Port: o.UDP.Port, Peers: map[netip.Prefix]netip.AddrPort{}}
		}
		if s.UDP.Device != o.UDP.Device || s.UDP.Port != o.UDP.Port {
			return fmt.Errorf("udp datapath wanted on both %s:%d and %s:%d", s.UDP.Device, s.UDP.Port, o.UDP.Device, o.UDP.Port)
		}
		for k, v := range o.UDP.Peers {
			s.UDP.Peers[k] = v
		}
	}
	return nil
}
