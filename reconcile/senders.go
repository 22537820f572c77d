package reconcile

import (
	"net/netip"
	"slices"

	"github.com/overlayd/overlayd/subnet"
)

// senderRefs counts, per address, the peers that send from it (senders in
// desired.go), so that a changed-peers pass changes the senders by what the
// changed peers had and have, without going over every peer. An address
// two peers send from stays while one of them does.
type senderRefs map[netip.Addr]int

func newSenderRefs(peers []subnet.Lease) senderRefs {
	refs := make(senderRefs, len(peers))
	for _, p := range peers {
		s := leaseSenders(p)
		for _, a := range s.list() {
			refs[a]++
		}
	}
	return refs
}

// leaseSenders are the addresses the peer of lease p sends from: its
// public addresses, and the source addresses of those that are an
// overwrite.
func leaseSenders(p subnet.Lease) peerSenders {
	return sendersOf(p.Attrs.PublicIP, p.Attrs.PublicIPv6, p.Attrs.SourceIP, p.Attrs.SourceIPv6)
}

// senders are the addresses the peer k was made of sends from.
func (k *peerKey) senders() []netip.Addr {
	s := sendersOf(k.publicIP, k.publicIP6, k.sourceIP, k.sourceIP6)
	return slices.Clone(s.list())
}

// peerSenders are a peer's sending addresses, without duplicates, in a
// value (a pass over thousands of peers allocates nothing for them).
type peerSenders struct {
	addrs [4]netip.Addr
	n     int
}

func (s *peerSenders) list() []netip.Addr { return s.addrs[:s.n] }

func sendersOf(public, public6, source, source6 netip.Addr) peerSenders {
	var s peerSenders
	for _, a := range [4]netip.Addr{public, public6, source, source6} {
		if a.IsValid() && !slices.Contains(s.list(), a) {
			s.addrs[s.n] = a
			s.n++
		}
	}
	return s
}

// change counts the senders of peers that changed from before to after
// and returns the addresses no peer sent from and one does now (added),
// and the reverse (removed).
func (r senderRefs) change(before, after [][]netip.Addr) (added, removed []netip.Addr) {
	was := map[netip.Addr]bool{}
	for _, addrs := range before {
		for _, a := range addrs {
			if _, seen := was[a]; !seen {
				was[a] = r[a] > 0
			}
			if r[a]--; r[a] <= 0 {
				delete(r, a)
			}
		}
	}
	for _, addrs := range after {
		for _, a := range addrs {
			if _, seen := was[a]; !seen {
				was[a] = r[a] > 0
			}
			r[a]++
		}
	}
	for a, had := range was {
		switch has := r[a] > 0; {
		case has && !had:
			added = append(added, a)
		case had && !has:
			removed = append(removed, a)
		}
	}
	slices.SortFunc(added, netip.Addr.Compare)
	slices.SortFunc(removed, netip.Addr.Compare)
	return added, removed
}

// editSorted returns the sorted, duplicate-free addrs without removed and
// with added.
func editSorted(addrs, added, removed []netip.Addr) []netip.Addr {
	for _, a := range removed {
		if i, found := slices.BinarySearchFunc(addrs, a, netip.Addr.Compare); found {
			addrs = slices.Delete(addrs, i, i+1)
		}
	}
	for _, a := range added {
		if i, found := slices.BinarySearchFunc(addrs, a, netip.Addr.Compare); !found {
			addrs = slices.Insert(addrs, i, a)
		}
	}
	return addrs
}
