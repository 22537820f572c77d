package kube

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"iter"
	"math"
	"net/netip"
	"slices"
	"time"

	"github.com/overlayd/overlayd/pkg/ip"
)

// The allocator decides, from what the cache shows, which subnet of one
// address family this node should hold in lease mode. It is pure (no API
// calls, no clock): lease mode carries out its decisions with the API
// server, and the API server's name uniqueness and resourceVersions settle
// any race the decision could not see.

// addressFamily is one family's allocation range from net-conf.json.
type addressFamily struct {
	name     string // familyIPv4 or familyIPv6, the Leases' family label
	network  netip.Prefix
	bits     int
	min, max netip.Prefix
}

func (f addressFamily) inRange(p netip.Prefix) bool {
	return p.Bits() == f.bits && ip.Covers(f.network, p) &&
		p.Addr().Compare(f.min.Addr()) >= 0 && p.Addr().Compare(f.max.Addr()) <= 0
}

// knownLease is what the allocator needs of a Lease in the cache.
type knownLease struct {
	name    string
	subnet  netip.Prefix // invalid when the Lease is malformed (it still takes its name)
	holder  string       // "" when released
	created time.Time
	expiry  time.Time // zero when released or never renewed: expired
}

// allocator searches one family's range for this node.
type allocator struct {
	family addressFamily
	node   string
	// The range as subnet indexes inside network: first, and count
	// subnets from there; start is this node's place in it.
	first, count, start uint64
}

func newAllocator(f addressFamily, node string) (*allocator, error) {
	first, err := ip.SubnetIndex(f.network, f.min)
	if err != nil {
		return nil, fmt.Errorf("%s SubnetMin: %w", f.name, err)
	}
	last, err := ip.SubnetIndex(f.network, f.max)
	if err != nil {
		return nil, fmt.Errorf("%s SubnetMax: %w", f.name, err)
	}
	count := last - first + 1
	if count == 0 { // the range is all 2^64 subnets
		count = math.MaxUint64
	}
	// Agents starting together rarely race for the same subnet, and a node
	// tends to get the same one again.
	h := fnv.New64a()
	h.Write([]byte(node))
	return &allocator{family: f, node: node, first: first, count: count, start: h.Sum64() % count}, nil
}

// allocation is the allocator's decision, to try in this order.
type allocation struct {
	// keep is the Lease this node holds in range (its earliest claim), nil
	// if none; extras are its other Leases, in or out of range, to release.
	keep   *knownLease
	extras []knownLease
	// free yields the free subnets, from this node's place in the range
	// around to it: no Lease has their name, none overlaps them.
	free iter.Seq2[netip.Prefix, error]
	// expired are other nodes' Leases in range that have expired (or were
	// released), the longest expired first, to take over.
	expired []knownLease
	// nextExpiry is when the next valid Lease in range expires; zero if none.
	nextExpiry time.Time
}

// plan decides from the Leases known now (of any family; the others only
// take their names).
func (a *allocator) plan(leases []knownLease, now time.Time) allocation {
	mine := make([]knownLease, 0, len(leases))
	for _, l := range leases {
		if a.ofFamily(l) {
			mine = append(mine, l)
		}
	}
	slices.SortFunc(mine, claimOrder)

	var out allocation
	for _, l := range mine {
		switch {
		case l.holder == a.node && out.keep == nil && a.family.inRange(l.subnet):
			out.keep = &l
		case l.holder == a.node:
			out.extras = append(out.extras, l)
		case !a.family.inRange(l.subnet):
		case l.expiry.Before(now):
			out.expired = append(out.expired, l)
		case out.nextExpiry.IsZero() || l.expiry.Before(out.nextExpiry):
			out.nextExpiry = l.expiry
		}
	}
	slices.SortStableFunc(out.expired, func(x, y knownLease) int { return x.expiry.Compare(y.expiry) })
	out.free = a.free(leases, mine)
	return out
}

func (a *allocator) ofFamily(l knownLease) bool {
	return l.subnet.IsValid() && l.subnet.Addr().Is4() == a.family.network.Addr().Is4()
}

// claimOrder sorts Leases as claims are ordered: creation time, then name.
func claimOrder(x, y knownLease) int {
	if c := x.created.Compare(y.created); c != 0 {
		return c
	}
	return cmp.Compare(x.name, y.name)
}

// free yields, lazily (a range may have billions of subnets), the subnets
// whose name no Lease has and that overlap no subnet of this family's Leases.
func (a *allocator) free(all, mine []knownLease) iter.Seq2[netip.Prefix, error] {
	names := make(map[string]bool, len(all))
	for _, l := range all {
		names[l.name] = true
	}
	// Wider subnets first: a narrower one overlapping an inserted one lies
	// inside it (prefixes nest or are disjoint), so the set stays disjoint
	// and covers every held address.
	byWidth := slices.Clone(mine)
	slices.SortStableFunc(byWidth, func(x, y knownLease) int { return cmp.Compare(x.subnet.Bits(), y.subnet.Bits()) })
	var held intervals
	for _, l := range byWidth {
		if !held.overlaps(l.subnet) {
			held.insert(l.subnet, nil)
		}
	}
	return func(yield func(netip.Prefix, error) bool) {
		for i := range a.count {
			p, err := ip.NthSubnet(a.family.network, a.family.bits, a.first+(a.start+i)%a.count)
			if err != nil {
				yield(netip.Prefix{}, fmt.Errorf("searching a free %s subnet: %w", a.family.name, err))
				return
			}
			if names[leaseName(p)] || held.overlaps(p) {
				continue
			}
			if !yield(p, nil) {
				return
			}
		}
	}
}

// retryIn is how long to wait before looking again when nothing could be
// taken: until the next Lease expires (a moment after, so that it has), at
// most a minute, since a Lease may go away without the cache telling.
func (al allocation) retryIn(now time.Time) time.Duration {
	delay := time.Minute
	if !al.nextExpiry.IsZero() {
		delay = min(delay, al.nextExpiry.Sub(now)+100*time.Millisecond)
	}
	return delay
}
