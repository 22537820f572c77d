package reconcile

import (
	"net/netip"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/subnet"
)

// peerCache remembers, per peer, what the backends made of it, so that a
// pass over thousands of peers does not map thousands of backend data
// again, and why peers are skipped, so that each change is logged once.
// What a backend makes of a peer depends on the peer's lease and on this
// node's configuration; a change of the latter empties the cache (reset).
type peerCache struct {
	backends map[string]backend.Backend // by type: our own, the replaced one while it drains, defaults for others
	results  map[peerKey]*peerResult
	skipped  map[string]string // peer -> why it is skipped
}

// peerKey is everything a peer's desired state depends on, besides this
// node's own configuration.
type peerKey struct {
	node, backendType string
	data, data6       string
	subnet, subnet6   netip.Prefix
	publicIP          netip.Addr
	publicIP6         netip.Addr
}

// peerResult is what a backend made of a peer: its state, or why it is skipped.
type peerResult struct {
	state backend.State
	err   error
}

func newPeerCache(own backend.Backend) peerCache {
	return peerCache{backends: map[string]backend.Backend{own.Type(): own}, skipped: map[string]string{}}
}

// reset forgets every result: the backends that reach peers are now own,
// and for peers still publishing the type of replaced, replaced.
func (c *peerCache) reset(own, replaced backend.Backend) {
	c.backends = map[string]backend.Backend{own.Type(): own}
	if replaced != nil && replaced.Type() != own.Type() {
		c.backends[replaced.Type()] = replaced
	}
	c.results = nil
}

// forget drops every result, keeping the backends: this node's underlay
// changed.
func (c *peerCache) forget() { c.results = nil }

// cachePass is one pass's use of the cache: results of peers seen in the
// pass are kept for the next, the others dropped.
type cachePass struct {
	c    *peerCache
	next map[peerKey]*peerResult
}

func (c *peerCache) begin(peers int) *cachePass {
	return &cachePass{c: c, next: make(map[peerKey]*peerResult, peers)}
}

func (p *cachePass) end() { p.c.results = p.next }

// add adds what reaching peer needs to st, computed on its own so that a
// peer that is skipped leaves nothing half-added.
func (p *cachePass) add(n backend.Node, peer subnet.Lease, st *backend.State) error {
	b, err := p.c.backendFor(peer.Attrs.BackendType)
	if err != nil {
		return backend.Skip(backend.SkipUnknownBackend, "%v", err)
	}
	key := peerKey{node: peer.Node, backendType: peer.Attrs.BackendType,
		subnet: peer.Subnet, publicIP: peer.Attrs.PublicIP, data: string(peer.Attrs.BackendData),
		subnet6: peer.IPv6Subnet, publicIP6: peer.Attrs.PublicIPv6, data6: string(peer.Attrs.BackendV6Data)}
	res := p.c.results[key]
	if res == nil {
		res = &peerResult{}
		res.err = b.Peer(n, peer, &res.state)
	}
	p.next[key] = res
	if s, ok := backend.IsSkip(res.err); ok && s.Family != "" {
		// One family skipped: the other's entries are wanted.
		if err := st.Merge(res.state); err != nil {
			return err
		}
		return res.err
	}
	if res.err != nil {
		return res.err
	}
	return st.Merge(res.state)
}

// backendFor returns the backend that reaches peers publishing typ: our own
// when it is our type, else that type with default options.
func (c *peerCache) backendFor(published string) (backend.Backend, error) {
	typ := backend.ForPublished(published)
	if b, ok := c.backends[typ]; ok {
		return b, nil
	}
	b, err := backend.New(typ, nil)
	if err != nil {
		return nil, err
	}
	c.backends[typ] = b
	return b, nil
}

// skip records why peer is skipped; true when that is news.
func (c *peerCache) skip(peer, why string) bool {
	if c.skipped[peer] == why {
		return false
	}
	c.skipped[peer] = why
	return true
}

// unskip forgets that peer was skipped; true if it was.
func (c *peerCache) unskip(peer string) bool {
	_, was := c.skipped[peer]
	delete(c.skipped, peer)
	return was
}

// forgetSkipsExcept forgets skipped peers that are gone.
func (c *peerCache) forgetSkipsExcept(peers []subnet.Lease) {
	if len(c.skipped) == 0 {
		return
	}
	seen := make(map[string]bool, len(peers))
	for _, p := range peers {
		seen[p.Node] = true
	}
	for name := range c.skipped {
		if !seen[name] {
			delete(c.skipped, name)
		}
	}
}
