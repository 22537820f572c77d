package subnet

import (
	"context"
	"encoding/json"
	"net/netip"
)

// Lease is one node's claim on a pod subnet, with what peers need to reach it.
type Lease struct {
	Node       string       // name of the node holding the lease
	Subnet     netip.Prefix // IPv4 pod subnet; invalid when IPv4 is off
	IPv6Subnet netip.Prefix // IPv6 pod subnet; invalid when IPv6 is off
	Attrs      LeaseAttrs
}

// LeaseAttrs is what a node publishes on its lease for its peers.
type LeaseAttrs struct {
	PublicIP   netip.Addr
	PublicIPv6 netip.Addr
	// SourceIP(v6) is the address the node's tunnels send from when it
	// differs from the public one peers send to (public-ip-overwrite): the
	// peers' ingress filters admit it too. Not flanneld's; invalid when the
	// two are the same.
	SourceIP, SourceIPv6 netip.Addr
	BackendType          string
	BackendData          json.RawMessage
	BackendV6Data        json.RawMessage
}

// NodeAddresses are what the node's own API object says about its public
// addresses, with flanneld's annotations: NodePublicIP (node-public-ip)
// stands in for --public-ip, so it also picks the interface when no
// interface flag does; Overwrite (public-ip-overwrite) is what peers are
// told to send to, whatever the interface. Invalid: not given.
type NodeAddresses struct {
	NodePublicIP, NodePublicIPv6 netip.Addr
	Overwrite, OverwriteV6       netip.Addr
}

// Manager is a lease store: it obtains this node's lease and keeps a complete,
// current picture of every peer's lease.
type Manager interface {
	// Acquire blocks until this node holds its lease and attrs are published on it.
	Acquire(ctx context.Context, attrs LeaseAttrs) (Lease, error)
	// Publish replaces the attributes on this node's lease, e.g. when the
	// backend changes.
	Publish(ctx context.Context, attrs LeaseAttrs) error
	// Run watches the peers (and keeps the own lease alive) until ctx ends.
	Run(ctx context.Context) error
	// Peers returns every valid peer lease and whether the initial sync is
	// complete. Before it is, the list must not be taken as the whole truth.
	Peers() (peers []Lease, synced bool)
	// NodeAddresses returns what this node's own object says about its
	// public addresses, and whether the initial sync is complete.
	NodeAddresses() (NodeAddresses, bool)
	// ChangedPeers returns the nodes whose peer lease may have appeared,
	// changed or gone since the last call, or all when that is not known
	// (then any may have): what a pass after lease changes alone looks at
	// instead of every peer.
	ChangedPeers() (nodes []string, all bool)
	// Peer returns node's peer lease as Peers has it; false when node is
	// not a peer.
	Peer(node string) (Lease, bool)
	// Changed receives a value, coalesced, whenever Peers or NodeAddresses
	// may have changed.
	Changed() <-chan struct{}
}
