package kube

import (
	"bytes"
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/pkg/metrics"
	"github.com/overlayd/overlayd/subnet"
)

// Reasons a peer is skipped: the values of overlayd_peers_skipped_total's
// reason label, shared with the daemon's loop (pkg/metrics).
var (
	reasonMissingSubnet        = metrics.NewSkipReason("missing_subnet")
	reasonMalformedSubnet      = metrics.NewSkipReason("malformed_subnet")
	reasonOutsideNetwork       = metrics.NewSkipReason("outside_network")
	reasonOverlap              = metrics.NewSkipReason("overlap")
	reasonDuplicate            = metrics.NewSkipReason("duplicate")
	reasonMissingAnnotations   = metrics.NewSkipReason("missing_annotations")
	reasonMalformedAnnotations = metrics.NewSkipReason("malformed_annotations")
)

// problem is why a record is not (part of) a peer. The zero value is no problem.
type problem struct {
	reason string
	detail string
	holder string // for reasonOverlap: the node that keeps the subnet
}

func (p problem) ok() bool { return p.reason == "" }

// record is one API object (a Node, or a Lease in lease mode) reduced to
// what the lease store needs. It is a value: equal records mean nothing
// relevant changed.
type record struct {
	*metav1.ObjectMeta // emptyObjectMeta for node records, see GetName

	key     string // store key of the object
	name    string // object name: the tie-breaker after creation time
	node    string // the node it speaks for
	created time.Time
	// subnets claimed; a Lease claims one family, a Node one or both.
	v4, v6 netip.Prefix
	attrs  subnet.LeaseAttrs
	// subnetP keeps the record from claiming anything; attrsP keeps a
	// claiming record out of the peers. Pointers: nil, the usual case,
	// costs 8 bytes per record instead of a whole problem.
	subnetP, attrsP *problem
	// ours are the own Node's annotations under the prefix (nil for others).
	ours map[string]string
}

// A node's record is what the node informer caches, in place of the much
// larger Node. The informer only asks a cached object for its name (for
// keys); the rest of metav1.Object comes from one shared, empty ObjectMeta,
// so that a record costs a pointer for it, not a whole ObjectMeta.
var emptyObjectMeta = &metav1.ObjectMeta{}

func (r *record) GetName() string      { return r.name }
func (r *record) GetNamespace() string { return "" }

func (r *record) subnetProblem() problem {
	if r.subnetP == nil {
		return problem{}
	}
	return *r.subnetP
}

func (r *record) attrsProblem() problem {
	if r.attrsP == nil {
		return problem{}
	}
	return *r.attrsP
}

func (r *record) equal(o *record) bool { return sameClaim(r, o) && attrsEqual(r.attrs, o.attrs) }

func attrsEqual(a, b subnet.LeaseAttrs) bool {
	return a.PublicIP == b.PublicIP && a.PublicIPv6 == b.PublicIPv6 && a.SourceIP == b.SourceIP && a.SourceIPv6 == b.SourceIPv6 &&
		a.BackendType == b.BackendType &&
		bytes.Equal(a.BackendData, b.BackendData) && bytes.Equal(a.BackendV6Data, b.BackendV6Data)
}

func leaseEqual(a, b subnet.Lease) bool {
	return a.Node == b.Node && a.Subnet == b.Subnet && a.IPv6Subnet == b.IPv6Subnet && attrsEqual(a.Attrs, b.Attrs)
}

// resolution is the outcome of resolve: the peers, why each other record
// was skipped, and how the own node fared.
type resolution struct {
	peers   []peer          // sorted by node name, own node excluded
	skipped map[string]skip // record key -> why, own node's records excluded
	// ownProblem is why the own node's subnet claim is refused (its
	// annotations do not matter: the agent is about to write them).
	ownProblem problem
	// node is what the own Node's annotations say about its public
	// addresses; nodeBad describes those that are malformed.
	node    subnet.NodeAddresses
	nodeBad string
}

// peer is a node's lease as the records it is made of (one, or one per
// address family in lease mode): records are immutable, so the snapshot
// keeps pointers, and builds the leases only when asked for them.
type peer struct{ first, second *record }

func (p peer) lease() subnet.Lease {
	l := subnet.Lease{Node: p.first.node, Subnet: p.first.v4, IPv6Subnet: p.first.v6, Attrs: p.first.attrs}
	if p.second != nil {
		if !l.Subnet.IsValid() {
			l.Subnet = p.second.v4
		}
		if !l.IPv6Subnet.IsValid() {
			l.IPv6Subnet = p.second.v6
		}
	}
	return l
}

func samePeer(a, b peer) bool {
	return (a.first == b.first && a.second == b.second) || leaseEqual(a.lease(), b.lease())
}

// find returns the index of node's peer in r.peers (sorted by node name).
func (r resolution) find(node string) (int, bool) {
	return slices.BinarySearchFunc(r.peers, node, func(p peer, node string) int { return strings.Compare(p.first.node, node) })
}

// leases builds the peer leases of a resolution.
func (r resolution) leases() []subnet.Lease {
	out := make([]subnet.Lease, len(r.peers))
	for i, p := range r.peers {
		out[i] = p.lease()
	}
	return out
}

type skip struct {
	problem problem
	record  *record
}

// resolve turns records into peers. Ownership of a subnet is decided among
// all records that claim one, whatever their annotations say: the earliest
// (creation time, then name) keeps it and later overlapping claims are
// refused, so a rogue or stale object can never take a subnet away from its
// holder, and removing the rogue changes nothing for the holder.
func resolve(net *netconf.Config, self string, records []*record) resolution {
	res := resolution{skipped: map[string]skip{}}
	skipRecord := func(r *record, p problem) {
		if r.node == self {
			if res.ownProblem.ok() {
				res.ownProblem = p
			}
			return
		}
		res.skipped[r.key] = skip{problem: p, record: r}
	}

	claiming := make([]*record, 0, len(records))
	for _, r := range records {
		if p := r.subnetProblem(); !p.ok() {
			skipRecord(r, p)
			continue
		}
		if p := outsideNetwork(net, r); !p.ok() {
			skipRecord(r, p)
			continue
		}
		claiming = append(claiming, r)
	}
	slices.SortFunc(claiming, func(a, b *record) int {
		if c := a.created.Compare(b.created); c != 0 {
			return c
		}
		return cmp.Compare(a.name, b.name)
	})

	var held4, held6 intervals
	winners := make([]*record, 0, len(claiming))
	for _, r := range claiming {
		var lost *record
		var lostPrefix netip.Prefix
		for _, c := range []struct {
			p    netip.Prefix
			held *intervals
		}{{r.v4, &held4}, {r.v6, &held6}} {
			if !c.p.IsValid() {
				continue
			}
			if h := c.held.overlapping(c.p); h != nil {
				if lost == nil {
					lost, lostPrefix = h, c.p
				}
				continue
			}
			c.held.insert(c.p, r)
		}
		if lost != nil {
			held := lost.v4
			if lostPrefix.Addr().Is6() {
				held = lost.v6
			}
			skipRecord(r, problem{
				reason: reasonOverlap,
				holder: lost.node,
				detail: fmt.Sprintf("subnet %s overlaps %s held by node %s (claimed since %s); the earlier claim keeps it",
					lostPrefix, held, lost.node, lost.created.UTC().Format(time.RFC3339)),
			})
			continue
		}
		winners = append(winners, r)
	}

	// Merge each node's winning records (a Node is one; in lease mode a
	// dual-stack node has one Lease per family) into one lease. The stable
	// sort keeps each node's records in claim order.
	slices.SortStableFunc(winners, func(a, b *record) int { return cmp.Compare(a.node, b.node) })
	res.peers = make([]peer, 0, len(winners))
	for len(winners) > 0 {
		node := winners[0].node
		n := 1
		for n < len(winners) && winners[n].node == node {
			n++
		}
		group := winners[:n]
		winners = winners[n:]

		used, subnetP, attrsP := merge(net, group)
		for i, r := range group {
			if used[i] || node == self {
				continue // the own node's extra leases are Acquire's business
			}
			skipRecord(r, problem{reason: reasonDuplicate, detail: fmt.Sprintf("node %s holds another lease of the same address family", node)})
		}
		if node == self {
			if !subnetP.ok() && res.ownProblem.ok() {
				res.ownProblem = subnetP
			}
			continue
		}
		// A peer with a subnet of one enabled family only (an IPv4-only
		// node in a dual-stack cluster) is still a peer: the loop reaches
		// the family it has and counts the other as skipped.
		p := problem{}
		if !subnetP.ok() && !anySubnet(group) {
			p = subnetP
		}
		if p.ok() {
			p = attrsP
		}
		if !p.ok() {
			for i, r := range group {
				if used[i] {
					skipRecord(r, p)
				}
			}
			continue
		}
		var pr peer
		for i, r := range group {
			switch {
			case !used[i]:
			case pr.first == nil:
				pr.first = r
			default:
				pr.second = r
			}
		}
		res.peers = append(res.peers, pr)
	}
	return res
}

// merge picks the records of a node's lease from its winning records (in
// claim order): the first of each address family; the lease's attributes
// are the first record's. subnetP says a family's subnet is missing, attrsP
// that the published attributes are unusable.
func merge(net *netconf.Config, rs []*record) (used []bool, subnetP, attrsP problem) {
	var lease subnet.Lease
	used = make([]bool, len(rs))
	for i, r := range rs {
		take := false
		if r.v4.IsValid() && !lease.Subnet.IsValid() {
			lease.Subnet, take = r.v4, true
		}
		if r.v6.IsValid() && !lease.IPv6Subnet.IsValid() {
			lease.IPv6Subnet, take = r.v6, true
		}
		if !take {
			continue
		}
		used[i] = true
		if p := r.attrsProblem(); !p.ok() && attrsP.ok() {
			attrsP = p
		}
	}
	switch {
	case net.EnableIPv4 && !lease.Subnet.IsValid():
		subnetP = problem{reason: reasonMissingSubnet, detail: "no IPv4 subnet yet"}
	case net.EnableIPv6 && !lease.IPv6Subnet.IsValid():
		subnetP = problem{reason: reasonMissingSubnet, detail: "no IPv6 subnet yet"}
	}
	return used, subnetP, attrsP
}

// anySubnet reports whether a node's records claim a subnet of any family.
func anySubnet(rs []*record) bool {
	for _, r := range rs {
		if r.v4.IsValid() || r.v6.IsValid() {
			return true
		}
	}
	return false
}

// outsideNetwork refuses a record claiming space outside the configured networks.
func outsideNetwork(net *netconf.Config, r *record) problem {
	check := func(p, network netip.Prefix, enabled bool, key string) problem {
		if !p.IsValid() {
			return problem{}
		}
		if !enabled {
			return problem{reason: reasonOutsideNetwork, detail: fmt.Sprintf("subnet %s: its address family is not enabled in net-conf.json", p)}
		}
		if !ip.Covers(network, p) {
			return problem{reason: reasonOutsideNetwork, detail: fmt.Sprintf("subnet %s lies outside %s %s", p, key, network)}
		}
		return problem{}
	}
	if p := check(r.v4, net.Network, net.EnableIPv4, "Network"); !p.ok() {
		return p
	}
	return check(r.v6, net.IPv6Network, net.EnableIPv6, "IPv6Network")
}

// intervals is a set of disjoint address ranges, sorted by first address,
// each remembering the record that holds it.
type intervals []interval

type interval struct {
	first, last netip.Addr
	holder      *record
}

// overlapping returns the holder of a range overlapping p, or nil.
func (s intervals) overlapping(p netip.Prefix) *record {
	if i := s.find(p); i >= 0 {
		return s[i].holder
	}
	return nil
}

// overlaps reports whether a range overlaps p, whatever its holder.
func (s intervals) overlaps(p netip.Prefix) bool { return s.find(p) >= 0 }

// find returns the index of a range overlapping p, or -1.
func (s intervals) find(p netip.Prefix) int {
	first, last := ip.Network(p), ip.Broadcast(p)
	// The first range that does not end before p starts.
	i, _ := slices.BinarySearchFunc(s, first, func(iv interval, a netip.Addr) int { return iv.last.Compare(a) })
	if i < len(s) && s[i].first.Compare(last) <= 0 {
		return i
	}
	return -1
}

// insert adds p, which must not overlap any range in the set.
func (s *intervals) insert(p netip.Prefix, holder *record) {
	first := ip.Network(p)
	i, _ := slices.BinarySearchFunc(*s, first, func(iv interval, a netip.Addr) int { return iv.first.Compare(a) })
	*s = slices.Insert(*s, i, interval{first: first, last: ip.Broadcast(p), holder: holder})
}
