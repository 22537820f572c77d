package udptunnel

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// Why a packet is refused. They are sentinel values so the datapath can
// reject a packet without allocating.
var (
	errTooShort       = errors.New("shorter than an IP header")
	errBadVersion     = errors.New("IP version is neither 4 nor 6")
	errBadHeaderLen   = errors.New("IPv4 header length field out of range")
	errLengthMismatch = errors.New("IP length field does not match the packet size")
)

const (
	ipv4HeaderLen = 20
	ipv6HeaderLen = 40
)

// inspect checks that b holds exactly one IPv4 or IPv6 packet — a known
// version, a header that fits, and a length field equal to len(b) — and
// returns its destination address. It is the only parsing done on bytes
// that arrive from the network, so it must hold for any input.
func inspect(b []byte) (dst netip.Addr, err error) {
	if len(b) == 0 {
		return netip.Addr{}, errTooShort
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < ipv4HeaderLen {
			return netip.Addr{}, errTooShort
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < ipv4HeaderLen || ihl > len(b) {
			return netip.Addr{}, errBadHeaderLen
		}
		if int(binary.BigEndian.Uint16(b[2:4])) != len(b) {
			return netip.Addr{}, errLengthMismatch
		}
		return netip.AddrFrom4([4]byte(b[16:20])), nil
	case 6:
		if len(b) < ipv6HeaderLen {
			return netip.Addr{}, errTooShort
		}
		if int(binary.BigEndian.Uint16(b[4:6]))+ipv6HeaderLen != len(b) {
			return netip.Addr{}, errLengthMismatch
		}
		return netip.AddrFrom16([16]byte(b[24:40])), nil
	default:
		return netip.Addr{}, errBadVersion
	}
}
