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
	results  map[string]*peerResult     // by peer (node name)
	skipped  map[string]string          // peer -> why it is skipped
}

// peerKey is everything a peer's desired state depends on, besides this
// node's own configuration, and the addresses it sends from (the
// senders).
type peerKey struct {
	backendType         string
	data, data6         string
	subnet, subnet6     netip.Prefix
	publicIP, publicIP6 netip.Addr
	sourceIP, sourceIP6 netip.Addr
}

func peerKeyOf(p subnet.Lease) peerKey {
	return peerKey{backendType: p.Attrs.BackendType, data: string(p.Attrs.BackendData), data6: string(p.Attrs.BackendV6Data),
		subnet: p.Subnet, subnet6: p.IPv6Subnet, publicIP: p.Attrs.PublicIP, publicIP6: p.Attrs.PublicIPv6,
		sourceIP: p.Attrs.SourceIP, sourceIP6: p.Attrs.SourceIPv6}
}

// matches reports whether p is the lease k was made of, without copying
// its backend data (the comparison of a string with a converted byte slice
// allocates nothing).
func (k *peerKey) matches(p subnet.Lease) bool {
	return k.backendType == p.Attrs.BackendType && k.subnet == p.Subnet && k.subnet6 == p.IPv6Subnet &&
		k.publicIP == p.Attrs.PublicIP && k.publicIP6 == p.Attrs.PublicIPv6 &&
		k.sourceIP == p.Attrs.SourceIP && k.sourceIP6 == p.Attrs.SourceIPv6 &&
		k.data == string(p.Attrs.BackendData) && k.data6 == string(p.Attrs.BackendV6Data)
}

// peerResult is what a backend made of a peer's lease: its state, or why
// it is skipped.
type peerResult struct {
	key   peerKey
	state backend.State
	err   error
}

// wanted is what of the result goes into the desired state: all of it,
// the other family's part when one family is skipped, nothing when the
// peer is skipped.
func (r *peerResult) wanted() *backend.State {
	if s, ok := backend.IsSkip(r.err); r.err == nil || ok && s.Family != "" {
		return &r.state
	}
	return nil
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
	next map[string]*peerResult
}

func (c *peerCache) begin(peers int) *cachePass {
	return &cachePass{c: c, next: make(map[string]*peerResult, peers)}
}

func (p *cachePass) end() { p.c.results = p.next }

// add adds what reaching peer needs to st, computed on its own so that a
// peer that is skipped leaves nothing half-added. It returns the peer's
// error, a skip or not.
func (p *cachePass) add(n backend.Node, peer subnet.Lease, st *backend.State) error {
	res := p.c.result(n, peer)
	p.next[peer.Node] = res
	if w := res.wanted(); w != nil {
		if err := st.Merge(*w); err != nil {
			return err
		}
	}
	return res.err
}

// result is what reaching peer needs: the cached result when its lease is
// the same, else computed again.
func (c *peerCache) result(n backend.Node, peer subnet.Lease) *peerResult {
	if res := c.results[peer.Node]; res != nil && res.key.matches(peer) {
		return res
	}
	res := &peerResult{key: peerKeyOf(peer)}
	b, err := c.backendFor(peer.Attrs.BackendType)
	if err != nil {
		res.err = backend.Skip(backend.SkipUnknownBackend, "%v", err)
		return res
	}
	res.err = b.Peer(n, peer, &res.state)
	return res
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
