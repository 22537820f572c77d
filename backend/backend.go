// Package backend defines what a backend is to overlayd: a small,
// declarative mapping from configuration and leases to desired state. A
// backend sets up nothing itself and watches nothing; the daemon loop
// applies what it declares and repairs it.
package backend

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"

	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/subnet"
)

// Node is what a backend knows about the node it runs on.
type Node struct {
	Name        string
	Lease       subnet.Lease // this node's own lease
	Network     netip.Prefix // cluster IPv4 network (invalid when IPv4 is off)
	IPv6Network netip.Prefix
	Underlay    *ip.External // the interface traffic between nodes uses
	// LinkMACs are the MACs of this node's devices that existed when the
	// agent started (its own from before, or another agent's it adopted),
	// by name: a device keeps its MAC, so peers need no update.
	LinkMACs map[string]net.HardwareAddr
}

// MAC is the MAC of the device name: the one it had when the agent
// started, else fallback.
func (n Node) MAC(name string, fallback net.HardwareAddr) net.HardwareAddr {
	if m, ok := n.LinkMACs[name]; ok {
		return m
	}
	return fallback
}

// Backend maps configuration and leases to desired state.
type Backend interface {
	// Type is the name in net-conf.json and in the backend-type annotation.
	Type() string
	// MTU is the MTU pods get with this backend (FLANNEL_MTU in subnet.env).
	MTU(n Node) int
	// Data is the backend data this node publishes for its peers for the
	// family f (backend-data, backend-v6-data); nil for none.
	Data(n Node, f Family) (json.RawMessage, error)
	// Local adds what this node needs to receive traffic of this backend,
	// for every family the node runs.
	Local(n Node, st *State) error
	// Peer adds what this node needs to send traffic to peer, which publishes
	// this backend's type, for every family both have (see EachFamily). A
	// *SkipError means the peer, or with its Family set that family of it,
	// cannot be reached this way; the daemon logs and counts it and carries on.
	Peer(n Node, peer subnet.Lease, st *State) error
}

// Factory builds a backend from its net-conf.json Backend object, checking
// every key. A nil object means all defaults.
type Factory func(config json.RawMessage) (Backend, error)

var (
	registryMu  sync.RWMutex
	registry    = map[string]Factory{}
	publishedAs = map[string]string{} // a type peers publish -> the backend that reaches them
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

// RegisterPublished says that peers publishing the backend type published
// (which is no configurable type) are reached with backend typ: flanneld's
// udp nodes, for one, publish an empty type.
func RegisterPublished(published, typ string) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := publishedAs[published]; dup {
		panic(fmt.Sprintf("backend: published type %q registered twice", published))
	}
	publishedAs[published] = typ
}

// ForPublished returns the backend type that reaches a peer publishing typ.
func ForPublished(typ string) string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	if t, ok := publishedAs[typ]; ok {
		return t
	}
	return typ
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

// Load parses and validates a whole net-conf.json (netconf.Parse), the
// backend's own options included, and returns the configured backend.
func Load(data []byte) (*netconf.Config, Backend, error) {
	cfg, err := netconf.Parse(data)
	if err != nil {
		return nil, nil, err
	}
	b, err := New(cfg.BackendType, cfg.Backend)
	if err != nil {
		return nil, nil, err
	}
	if c, ok := b.(ConfigChecker); ok {
		if err := c.CheckConfig(cfg); err != nil {
			return nil, nil, err
		}
	}
	return cfg, b, nil
}

// ConfigChecker is a backend that cannot run with every net-conf.json (the
// udp backend carries IPv4 only).
type ConfigChecker interface {
	// CheckConfig refuses what the backend cannot run with, naming the key.
	CheckConfig(cfg *netconf.Config) error
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
