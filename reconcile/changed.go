package reconcile

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"

	"go.uber.org/zap"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/pkg/health"
	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/subnet"
)

// A pass after lease changes alone (no kernel event, timer, configuration
// or failure since the last pass) applies only what the changed peers —
// the lease store names them — need: their entries before and after go to
// Kernel.ApplyChanged, which
// trusts what the last full pass set instead of reading every table back,
// and their senders to the ingress filter. A full pass still runs at the
// start, on every kernel event (the kernel's echo of our own writes
// excepted, see kernel.Watch), on the resync timer and after any failure,
// so nothing the kernel lost waits for a change. The rules resync checks
// the traffic rules alone.

// A changed-peers pass takes on at most a quarter of the peers, and at
// least minChangedPeers: more (a cluster starting, a mass update) are as
// cheap in one full pass.
const minChangedPeers = 64

func maxChangedPeers(peers int) int { return max(minChangedPeers, peers/4) }

// changedPeer is one peer's result before and after a lease change; nil
// for a peer that was not there, or is gone.
type changedPeer struct {
	node   string
	lease  subnet.Lease // zero when gone
	before *peerResult
	after  *peerResult
}

// passChanged runs the pass as a changed-peers pass when it can; false
// when a full pass must run instead. nodes are the peers the lease store
// says changed, or any (all: every peer is compared with the cache).
func (l *Loop) passChanged(ctx context.Context, nodes []string, all bool) (bool, error) {
	if why := l.fullPassNeeded(); why != "" {
		l.log.Debug("full pass", zap.String("reason", why))
		return false, nil
	}
	var changed []changedPeer
	ok := true
	if all {
		peers, _ := l.cfg.Leases.Peers()
		changed, ok = l.changedPeers(peers)
	} else if len(nodes) > 0 {
		changed, ok = l.changedNodes(nodes)
	}
	if !ok {
		l.log.Debug("full pass", zap.String("reason", "many peers changed"))
		return false, nil
	}
	var rulesErr error
	if l.rulesDue.Swap(false) && l.cfg.Rules != nil {
		// The rules resync: the whole rules, the kernel's tables not.
		rulesErr = l.ensureRules(*l.lastState)
	}
	if len(changed) == 0 {
		return true, rulesErr
	}
	// Only the entries change; the devices are the node's own.
	var unset, set kernel.State
	for i := range changed {
		c := &changed[i]
		if c.lease.Node != "" {
			c.after = l.peers.result(l.node, c.lease)
			if _, skip := backend.IsSkip(c.after.err); c.after.err != nil && !skip {
				return false, nil // the full pass fails and reports it
			}
		}
		for _, r := range []*peerResult{c.before, c.after} {
			if w := r.wantedOrNil(); w != nil && !l.onlyEntries(w) {
				l.log.Debug("full pass", zap.String("reason", "a changed peer needs devices or datapaths of its own"), zap.String("peer", c.node))
				return false, nil
			}
		}
		if w := c.before.wantedOrNil(); w != nil {
			unset.Routes, unset.Neighs, unset.FDB = append(unset.Routes, w.Routes...), append(unset.Neighs, w.Neighs...), append(unset.FDB, w.FDB...)
		}
		if w := c.after.wantedOrNil(); w != nil {
			set.Routes, set.Neighs, set.FDB = append(set.Routes, w.Routes...), append(set.Neighs, w.Neighs...), append(set.FDB, w.FDB...)
		}
	}
	if len(l.lastState.IngressPorts) > 0 && l.senderRefs == nil {
		return false, nil
	}

	// From here on the pass is this one: the cache, the skips, the
	// senders and the desired state follow the changed peers.
	var sentBefore, sentAfter [][]netip.Addr
	for _, c := range changed {
		if c.before != nil {
			sentBefore = append(sentBefore, c.before.key.senders())
		}
		if c.after == nil {
			delete(l.peers.results, c.node)
			delete(l.peers.skipped, c.node)
			continue
		}
		sentAfter = append(sentAfter, c.after.key.senders())
		l.peers.results[c.node] = c.after
		l.notePeer(c.lease, c.after.err)
	}
	want := l.lastState // edited in place: a failure below makes the next pass a full one
	want.Routes = replaceEntries(want.Routes, unset.Routes, set.Routes, routeEntry)
	want.Neighs = replaceEntries(want.Neighs, unset.Neighs, set.Neighs, neighEntryOf)
	want.FDB = replaceEntries(want.FDB, unset.FDB, set.FDB, fdbEntryOf)
	l.lastUnordered = true

	// The rules first, as in a full pass: a peer that joins is let in
	// before its routes point at it.
	if l.senderRefs != nil {
		added, removed := l.senderRefs.change(sentBefore, sentAfter)
		want.Senders = editSorted(want.Senders, added, removed)
		if l.cfg.Rules != nil && l.cfg.IngressFilter && len(added)+len(removed) > 0 {
			if err := l.cfg.Rules.ChangeSenders(added, removed); err != nil {
				rulesErr = errors.Join(rulesErr, fmt.Errorf("traffic rules: %w", err))
				l.cfg.Status.Set(health.Rules, false, err.Error())
			}
		}
	}
	changes, counts, err := l.cfg.Kernel.ApplyChanged(unset, set)
	if errors.Is(err, kernel.ErrUntrusted) {
		// The cache, the skips and the rules are right for the full pass
		// too; the kernel's changes it makes are no repairs.
		l.lastState = nil
		return false, nil
	}
	if err != nil {
		// The full pass that follows puts right what failed: no repairs.
		l.lastState = nil
		l.cfg.Status.Set(health.Datapath, false, err.Error())
		return true, errors.Join(fmt.Errorf("kernel: %w", err), rulesErr)
	}
	setKernelEntries(counts)
	changedPeerRuns.Inc()
	l.log.Debug("applied changed peers only", zap.Int("peers", len(changed)),
		zap.Any("created", changes.Created), zap.Any("updated", changes.Updated), zap.Any("deleted", changes.Deleted))
	l.datapathReady(len(l.peers.results))
	return true, errors.Join(l.publish(ctx), rulesErr)
}

// onlyEntries reports whether a peer's state is only routes, neighbour and
// FDB entries, on devices this node wants anyway: what ApplyChanged can
// change.
func (l *Loop) onlyEntries(st *backend.State) bool {
	if len(st.Datapaths) > 0 {
		return false
	}
	for _, p := range st.IngressPorts {
		if !slices.Contains(l.lastState.IngressPorts, p) {
			return false
		}
	}
	for _, link := range st.Links {
		if !slices.ContainsFunc(l.ownLinks, link.Equal) {
			return false
		}
	}
	return true
}

// fullPassNeeded says why this pass must be a full one, "" when a
// changed-peers pass can do.
func (l *Loop) fullPassNeeded() string {
	switch {
	case l.lastState == nil || l.peers.results == nil:
		return "no pass succeeded yet"
	case !l.takeover.done:
		return "taking over from flanneld"
	case len(l.drains) > 0:
		return "a replaced backend is draining"
	case len(l.lastState.Datapaths) > 0:
		return "the backend has a datapath of its own"
	case l.pending.Load() != nil:
		return "a changed configuration"
	}
	if a, _ := l.cfg.Leases.NodeAddresses(); a != l.addrs {
		return "this node's address annotations changed"
	}
	return ""
}

// changedPeers compares peers with the results of the last pass: the peers
// whose lease is new, changed or gone. False when there are too many for
// a changed-peers pass.
func (l *Loop) changedPeers(peers []subnet.Lease) ([]changedPeer, bool) {
	var changed []changedPeer
	limit := maxChangedPeers(len(peers))
	known := 0
	for _, p := range peers {
		res := l.peers.results[p.Node]
		if res != nil {
			known++
			if res.key.matches(p) {
				continue
			}
		}
		if len(changed) == limit {
			return nil, false
		}
		changed = append(changed, changedPeer{node: p.Node, lease: p, before: res})
	}
	if known < len(l.peers.results) {
		// Some are gone: the ones not among peers.
		present := make(map[string]bool, len(peers))
		for _, p := range peers {
			present[p.Node] = true
		}
		for node, res := range l.peers.results {
			if present[node] {
				continue
			}
			if len(changed) == limit {
				return nil, false
			}
			changed = append(changed, changedPeer{node: node, before: res})
		}
	}
	return changed, true
}

// changedNodes is changedPeers for the nodes the lease store names.
func (l *Loop) changedNodes(nodes []string) ([]changedPeer, bool) {
	if len(nodes) > maxChangedPeers(len(l.peers.results)) {
		return nil, false
	}
	var changed []changedPeer
	for _, node := range nodes {
		res := l.peers.results[node]
		lease, isPeer := l.cfg.Leases.Peer(node)
		switch {
		case isPeer && res != nil && res.key.matches(lease):
		case isPeer:
			changed = append(changed, changedPeer{node: node, lease: lease, before: res})
		case res != nil:
			changed = append(changed, changedPeer{node: node, before: res})
		}
	}
	return changed, true
}

// wantedOrNil is r.wanted(), nil for no result.
func (r *peerResult) wantedOrNil() *backend.State {
	if r == nil {
		return nil
	}
	return r.wanted()
}

// replaceEntries removes from entries one of each of unset and appends
// set: a changed-peers pass's edit of the desired state, which leaves it
// in another order than a full pass builds (lastUnordered).
func replaceEntries[E any, K comparable](entries, unset, set []E, key func(E) K) []E {
	if len(unset) > 0 {
		drop := make(map[K]int, len(unset))
		for _, e := range unset {
			drop[key(e)]++
		}
		entries = slices.DeleteFunc(entries, func(e E) bool {
			k := key(e)
			if drop[k] > 0 {
				drop[k]--
				return true
			}
			return false
		})
	}
	return append(entries, set...)
}

// sameEntries reports whether a and b hold the same entries, in any order.
func sameEntries[E any, K comparable](a, b []E, key func(E) K) bool {
	if len(a) != len(b) {
		return false
	}
	n := make(map[K]int, len(a))
	for _, e := range a {
		n[key(e)]++
	}
	for _, e := range b {
		k := key(e)
		if n[k] == 0 {
			return false
		}
		n[k]--
	}
	return true
}

// Comparable forms of the entries (a MAC address is a slice).
type (
	neighEntry struct {
		dev, mac string
		ip       netip.Addr
	}
	fdbEntry struct {
		dev, mac string
		dst      netip.Addr
	}
)

func routeEntry(r kernel.Route) kernel.Route { return r }
func neighEntryOf(n kernel.Neigh) neighEntry {
	return neighEntry{dev: n.Dev, mac: string(n.MAC), ip: n.IP}
}
func fdbEntryOf(f kernel.FDBEntry) fdbEntry {
	return fdbEntry{dev: f.Dev, mac: string(f.MAC), dst: f.Dst}
}

// sameDesired reports whether two desired states are the same; unordered:
// b's kernel entries may be in another order (a changed-peers pass made it).
func sameDesired(a, b backend.State, unordered bool) bool {
	if !unordered {
		return reflect.DeepEqual(a, b)
	}
	ka, kb := a.State, b.State
	a.Routes, a.Neighs, a.FDB, b.Routes, b.Neighs, b.FDB = nil, nil, nil, nil, nil, nil
	return reflect.DeepEqual(a, b) && sameEntries(ka.Routes, kb.Routes, routeEntry) &&
		sameEntries(ka.Neighs, kb.Neighs, neighEntryOf) && sameEntries(ka.FDB, kb.FDB, fdbEntryOf)
}
