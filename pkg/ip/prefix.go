// Package ip holds the IPv4/IPv6 arithmetic overlayd needs on netip values
// and the choice of the external interface and public address. Everything
// here is a pure function of its arguments; the one impure piece, reading
// the host's interfaces and routes, sits behind the Host interface.
package ip

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"net/netip"
)

// u128 is an address as a number: an IPv4 address is its 32-bit value, an
// IPv6 address its 128-bit value, so the same arithmetic serves both.
type u128 struct{ hi, lo uint64 }

func toU128(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{0, uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

// fromU128 turns n back into an address of the same family as like, and
// reports false when n does not fit that family.
func fromU128(n u128, like netip.Addr) (netip.Addr, bool) {
	if like.Is4() {
		if n.hi != 0 || n.lo > math.MaxUint32 {
			return netip.Addr{}, false
		}
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(n.lo))
		return netip.AddrFrom4(b), true
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], n.hi)
	binary.BigEndian.PutUint64(b[8:], n.lo)
	return netip.AddrFrom16(b), true
}

// add returns n+m and false when the sum does not fit 128 bits.
func (n u128) add(m u128) (u128, bool) {
	lo, carry := bits.Add64(n.lo, m.lo, 0)
	hi, carry := bits.Add64(n.hi, m.hi, carry)
	return u128{hi, lo}, carry == 0
}

func (n u128) sub(m u128) u128 {
	lo, borrow := bits.Sub64(n.lo, m.lo, 0)
	hi, _ := bits.Sub64(n.hi, m.hi, borrow)
	return u128{hi, lo}
}

// shl returns n<<s for s in [0,128).
func (n u128) shl(s uint) u128 {
	switch {
	case s == 0:
		return n
	case s >= 64:
		return u128{n.lo << (s - 64), 0}
	default:
		return u128{n.hi<<s | n.lo>>(64-s), n.lo << s}
	}
}

// shr returns n>>s for s in [0,128).
func (n u128) shr(s uint) u128 {
	switch {
	case s == 0:
		return n
	case s >= 64:
		return u128{0, n.hi >> (s - 64)}
	default:
		return u128{n.hi >> s, n.lo>>s | n.hi<<(64-s)}
	}
}

// bitLen is the number of address bits of the prefix's family (32 or 128).
func bitLen(p netip.Prefix) int { return p.Addr().BitLen() }

// AddrAdd returns a+n, and false when the sum leaves a's family.
func AddrAdd(a netip.Addr, n uint64) (netip.Addr, bool) {
	sum, ok := toU128(a).add(u128{0, n})
	if !ok {
		return netip.Addr{}, false
	}
	return fromU128(sum, a)
}

// Network returns the first address of p (host bits cleared).
func Network(p netip.Prefix) netip.Addr { return p.Masked().Addr() }

// Broadcast returns the last address of p: for IPv4 its broadcast address.
func Broadcast(p netip.Prefix) netip.Addr {
	hostBits := uint(bitLen(p) - p.Bits())
	n := toU128(Network(p))
	if hostBits == 0 {
		return Network(p)
	}
	ones := u128{math.MaxUint64, math.MaxUint64}.shr(128 - hostBits)
	a, _ := fromU128(u128{n.hi | ones.hi, n.lo | ones.lo}, p.Addr())
	return a
}

// FirstHost returns the first address after the network address, the one
// flannel gives the node's bridge (10.244.3.0/24 -> 10.244.3.1). For /32 and
// /128 it is the address itself.
func FirstHost(p netip.Prefix) netip.Addr {
	n := Network(p)
	if p.Bits() == bitLen(p) {
		return n
	}
	a, _ := AddrAdd(n, 1)
	return a
}

// Covers reports whether inner lies entirely inside outer.
func Covers(outer, inner netip.Prefix) bool {
	return outer.IsValid() && inner.IsValid() &&
		outer.Addr().BitLen() == inner.Addr().BitLen() &&
		outer.Bits() <= inner.Bits() && outer.Contains(inner.Addr())
}

// NextPrefix returns the prefix of the same length that follows p, and false
// at the end of the address space.
func NextPrefix(p netip.Prefix) (netip.Prefix, bool) {
	if p.Bits() == 0 {
		return netip.Prefix{}, false // the whole space has no successor
	}
	step := u128{0, 1}.shl(uint(bitLen(p) - p.Bits()))
	next, ok := toU128(Network(p)).add(step)
	if !ok {
		return netip.Prefix{}, false
	}
	a, ok := fromU128(next, p.Addr())
	if !ok {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, p.Bits()), true
}

// SubnetCount returns how many subnets of length bits fit in network,
// saturating at math.MaxUint64.
func SubnetCount(network netip.Prefix, bits int) uint64 {
	diff := bits - network.Bits()
	switch {
	case diff < 0:
		return 0
	case diff >= 64:
		return math.MaxUint64
	default:
		return 1 << uint(diff)
	}
}

// NthSubnet returns the n-th (from 0) subnet of length bits inside network.
func NthSubnet(network netip.Prefix, bits int, n uint64) (netip.Prefix, error) {
	if bits < network.Bits() || bits > bitLen(network) {
		return netip.Prefix{}, fmt.Errorf("subnet length /%d does not fit in %s", bits, network)
	}
	if n >= SubnetCount(network, bits) && bits-network.Bits() < 64 {
		return netip.Prefix{}, fmt.Errorf("%s has only %d subnets of length /%d, not %d",
			network, SubnetCount(network, bits), bits, n+1)
	}
	off := u128{0, n}.shl(uint(bitLen(network) - bits))
	sum, _ := toU128(Network(network)).add(off)
	a, _ := fromU128(sum, network.Addr())
	return netip.PrefixFrom(a, bits), nil
}

// SubnetIndex returns the position of sub among the subnets of its own length
// inside network: the inverse of NthSubnet.
func SubnetIndex(network, sub netip.Prefix) (uint64, error) {
	if !Covers(network, sub) {
		return 0, fmt.Errorf("%s is not inside %s", sub, network)
	}
	off := toU128(Network(sub)).sub(toU128(Network(network))).shr(uint(bitLen(sub) - sub.Bits()))
	if off.hi != 0 {
		return 0, fmt.Errorf("the position of %s inside %s does not fit 64 bits", sub, network)
	}
	return off.lo, nil
}

// ParsePrefix parses a CIDR and insists it is canonical: "10.244.1.0/16"
// is refused, because it almost always means a typo in the mask or address.
func ParsePrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%q: write IPv4 networks in IPv4 form", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%q has host bits set (the network is %s)", s, p.Masked())
	}
	return p, nil
}
