package backend

import (
	"encoding/json"
	"net/netip"

	"github.com/overlayd/overlayd/subnet"
)

// Family is an address family of the pod network. Backends map a node and a
// peer family by family with it, so that dual-stack is a dimension of one
// code path, not a copy of each function.
type Family struct{ v6 bool }

// The two families.
var (
	IPv4 = Family{}
	IPv6 = Family{v6: true}
)

func (f Family) String() string {
	if f.v6 {
		return "IPv6"
	}
	return "IPv4"
}

// Is6 reports whether f is IPv6.
func (f Family) Is6() bool { return f.v6 }

// Families are the families this node's network runs: those with a
// network in net-conf.json.
func (n Node) Families() []Family {
	var out []Family
	if n.Network.IsValid() {
		out = append(out, IPv4)
	}
	if n.IPv6Network.IsValid() {
		out = append(out, IPv6)
	}
	return out
}

// Subnet is the lease's pod subnet of the family; invalid when it has none.
func (f Family) Subnet(l subnet.Lease) netip.Prefix {
	if f.v6 {
		return l.IPv6Subnet
	}
	return l.Subnet
}

// PublicIP is the address the family's traffic to the lease's node goes to.
func (f Family) PublicIP(a subnet.LeaseAttrs) netip.Addr {
	if f.v6 {
		return a.PublicIPv6
	}
	return a.PublicIP
}

// Data is the backend data the lease's node publishes for the family.
func (f Family) Data(a subnet.LeaseAttrs) json.RawMessage {
	if f.v6 {
		return a.BackendV6Data
	}
	return a.BackendData
}

// UnderlayAddr is this node's address of the family on the underlay: the
// source of its encapsulated traffic.
func (f Family) UnderlayAddr(n Node) netip.Addr {
	if f.v6 {
		return n.Underlay.Addr6
	}
	return n.Underlay.Addr
}

// HostPrefix is a as a one-address prefix (/32, /128).
func HostPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// EachFamily calls add for every family the node runs, with the peer's
// subnet and public address of it. A family the peer lacks, or whose add
// returns a *SkipError, is skipped on its own: the others are still added,
// and the first such skip is returned (a partial skip). When no family can
// be added the skip is the whole peer's. add must add nothing when it
// returns an error.
func EachFamily(n Node, peer subnet.Lease, add func(f Family, subnet netip.Prefix, publicIP netip.Addr) error) error {
	var skipped *SkipError
	added := 0
	for _, f := range n.Families() {
		sub, pub := f.Subnet(peer), f.PublicIP(peer.Attrs)
		var err error
		if !sub.IsValid() || !pub.IsValid() {
			err = SkipFamily(f, SkipMissingFamily, "the peer publishes no %s subnet or public address", f)
		} else {
			err = add(f, sub, pub)
		}
		if s, ok := IsSkip(err); ok {
			if skipped == nil {
				skipped = &SkipError{Reason: s.Reason, Family: f.String(), Err: s.Err}
			}
			continue
		}
		if err != nil {
			return err
		}
		added++
	}
	if skipped != nil && added == 0 {
		skipped.Family = ""
	}
	if skipped != nil {
		return skipped
	}
	return nil
}
