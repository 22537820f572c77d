package udptunnel

import (
	"encoding/binary"
	"net/netip"
)

// ipv4UDP builds a complete IPv4/UDP packet with correct checksums, the
// bytes a kernel would put on the wire for it.
func ipv4UDP(src, dst netip.AddrPort, id uint16, payload []byte) []byte {
	const udpHeaderLen = 8
	total := ipv4HeaderLen + udpHeaderLen + len(payload)
	p := make([]byte, total)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(total))
	binary.BigEndian.PutUint16(p[4:], id)
	p[8] = 64 // TTL
	p[9] = 17 // UDP
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(p[12:16], s4[:])
	copy(p[16:20], d4[:])
	binary.BigEndian.PutUint16(p[10:], ^onesSum(p[:ipv4HeaderLen], 0))

	u := p[ipv4HeaderLen:]
	binary.BigEndian.PutUint16(u[0:], src.Port())
	binary.BigEndian.PutUint16(u[2:], dst.Port())
	binary.BigEndian.PutUint16(u[4:], uint16(udpHeaderLen+len(payload)))
	copy(u[udpHeaderLen:], payload)
	pseudo := make([]byte, 12)
	copy(pseudo[0:4], s4[:])
	copy(pseudo[4:8], d4[:])
	pseudo[9] = 17
	binary.BigEndian.PutUint16(pseudo[10:], uint16(len(u)))
	sum := ^onesSum(u, uint32(onesSum(pseudo, 0)))
	if sum == 0 {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], sum)
	return p
}

// onesSum is the folded one's-complement sum of b, starting from initial.
func onesSum(b []byte, initial uint32) uint16 {
	sum := initial
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}
