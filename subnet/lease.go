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
	PublicIP      netip.Addr
	PublicIPv6    netip.Addr
	BackendType   string
	BackendData   json.RawMessage
	BackendV6Data json.RawMessage
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
	// Changed receives a value, coalesced, whenever Peers may have changed.
	Changed() <-chan struct{}
}
