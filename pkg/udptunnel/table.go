package udptunnel

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"golang.zx2c4.com/wireguard/conn"
)

// peer is one remote node: the pod subnet it owns and where to send it.
type peer struct {
	subnet netip.Prefix
	addr   netip.Addr
	ep     *conn.StdNetEndpoint
}

// table maps a destination address to its peer and tells which source
// addresses may send to us. It is immutable once built: the datapath reads
// it through an atomic pointer and a change builds a new one.
//
// Lookups try each distinct prefix length, longest first, with one map
// lookup each. A cluster uses one subnet length for all nodes, so a lookup
// is a single map access whatever the number of peers.
type table struct {
	v4      []byLen4
	v6      []byLen6
	sources map[netip.Addr]struct{}
	peers   int
}

type byLen4 struct {
	mask  uint32
	peers map[uint32]*peer
}

type byLen6 struct {
	hiMask, loMask uint64
	peers          map[[2]uint64]*peer
}

// buildTable turns the desired peers into a table. Entries that cannot be
// used are left out and described in skipped; the rest still work.
func buildTable(peers map[netip.Prefix]netip.AddrPort, port int, sources []netip.Addr) (t *table, skipped []string) {
	t = &table{sources: make(map[netip.Addr]struct{}, len(peers)+len(sources))}
	for _, a := range sources {
		if a = a.Unmap(); a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() {
			t.sources[a] = struct{}{}
		}
	}
	v4 := map[int]map[uint32]*peer{}
	v6 := map[int]map[[2]uint64]*peer{}
	// Sorted so that the choice between conflicting entries never depends
	// on map order.
	prefixes := slices.SortedFunc(maps.Keys(peers), func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.Bits(), b.Bits())
	})
	for _, prefix := range prefixes {
		addr := peers[prefix].Addr().Unmap()
		peerPort := int(peers[prefix].Port())
		if peerPort == 0 {
			peerPort = port
		}
		if !prefix.IsValid() || prefix.Addr().Is4In6() || prefix.Addr().Zone() != "" {
			skipped = append(skipped, fmt.Sprintf("peer subnet %q is not a valid prefix", prefix))
			continue
		}
		if !addr.IsValid() || addr.IsUnspecified() || addr.IsMulticast() || addr.Zone() != "" {
			skipped = append(skipped, fmt.Sprintf("peer subnet %s: public address %q is not a unicast address", prefix, addr))
			continue
		}
		subnet := prefix.Masked()
		p := &peer{subnet: subnet, addr: addr, ep: &conn.StdNetEndpoint{AddrPort: netip.AddrPortFrom(addr, uint16(peerPort))}}
		if subnet.Addr().Is4() {
			m := v4[subnet.Bits()]
			if m == nil {
				m = map[uint32]*peer{}
				v4[subnet.Bits()] = m
			}
			key := binary.BigEndian.Uint32(subnet.Addr().AsSlice())
			if old, dup := m[key]; dup && old.addr != addr {
				skipped = append(skipped, fmt.Sprintf("peer subnet %s is claimed by both %s and %s; keeping %s", subnet, old.addr, addr, old.addr))
				continue
			}
			m[key] = p
		} else {
			m := v6[subnet.Bits()]
			if m == nil {
				m = map[[2]uint64]*peer{}
				v6[subnet.Bits()] = m
			}
			key := split16(subnet.Addr().As16())
			if old, dup := m[key]; dup && old.addr != addr {
				skipped = append(skipped, fmt.Sprintf("peer subnet %s is claimed by both %s and %s; keeping %s", subnet, old.addr, addr, old.addr))
				continue
			}
			m[key] = p
		}
		t.sources[addr] = struct{}{}
		t.peers++
	}
	for _, bits := range slices.Backward(slices.Sorted(maps.Keys(v4))) {
		t.v4 = append(t.v4, byLen4{mask: mask32(bits), peers: v4[bits]})
	}
	for _, bits := range slices.Backward(slices.Sorted(maps.Keys(v6))) {
		hi, lo := mask128(bits)
		t.v6 = append(t.v6, byLen6{hiMask: hi, loMask: lo, peers: v6[bits]})
	}
	return t, skipped
}

// lookup returns the peer whose subnet holds dst (longest match), or nil.
func (t *table) lookup(dst netip.Addr) *peer {
	if dst.Is4() {
		a4 := dst.As4()
		a := binary.BigEndian.Uint32(a4[:])
		for i := range t.v4 {
			if p := t.v4[i].peers[a&t.v4[i].mask]; p != nil {
				return p
			}
		}
		return nil
	}
	a := split16(dst.As16())
	for i := range t.v6 {
		if p := t.v6[i].peers[[2]uint64{a[0] & t.v6[i].hiMask, a[1] & t.v6[i].loMask}]; p != nil {
			return p
		}
	}
	return nil
}

// knownSource reports whether src is the public address of a current peer
// or one of the extra sources.
func (t *table) knownSource(src netip.Addr) bool {
	_, ok := t.sources[src]
	return ok
}

func split16(a [16]byte) [2]uint64 {
	return [2]uint64{binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:])}
}

func mask32(bits int) uint32 {
	if bits == 0 {
		return 0
	}
	return ^uint32(0) << (32 - bits)
}

func mask128(bits int) (hi, lo uint64) {
	switch {
	case bits == 0:
		return 0, 0
	case bits <= 64:
		return ^uint64(0) << (64 - bits), 0
	case bits == 128:
		return ^uint64(0), ^uint64(0)
	default:
		return ^uint64(0), ^uint64(0) << (128 - bits)
	}
}
