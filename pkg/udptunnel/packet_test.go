package udptunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
)

func ipv6Packet(dst netip.Addr, payload int) []byte {
	p := make([]byte, ipv6HeaderLen+payload)
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(payload))
	p[6] = 17
	p[7] = 64
	d := dst.As16()
	copy(p[24:40], d[:])
	return p
}

func TestInspect(t *testing.T) {
	v4 := ipv4UDP(netip.MustParseAddrPort("10.244.1.2:1"), netip.MustParseAddrPort("10.244.2.3:2"), 1, []byte("hi"))
	v6 := ipv6Packet(netip.MustParseAddr("fd00::3"), 12)
	edit := func(p []byte, f func([]byte)) []byte { p = bytes.Clone(p); f(p); return p }
	for _, tc := range []struct {
		name string
		pkt  []byte
		dst  string
		err  error
	}{
		{"ipv4", v4, "10.244.2.3", nil},
		{"ipv4 with options", func() []byte {
			p := make([]byte, 24)
			p[0] = 0x46
			binary.BigEndian.PutUint16(p[2:], 24)
			copy(p[16:20], []byte{10, 0, 0, 9})
			return p
		}(), "10.0.0.9", nil},
		{"ipv6", v6, "fd00::3", nil},
		{"empty", nil, "", errTooShort},
		{"ipv4 short", v4[:19], "", errTooShort},
		{"ipv6 short", v6[:39], "", errTooShort},
		{"version 0", make([]byte, 40), "", errBadVersion},
		{"version 5", edit(v4, func(p []byte) { p[0] = 0x55 }), "", errBadVersion},
		{"ihl 4", edit(v4, func(p []byte) { p[0] = 0x44 }), "", errBadHeaderLen},
		{"ihl past end", edit(v4, func(p []byte) { p[0] = 0x4f }), "", errBadHeaderLen},
		{"ipv4 length long", edit(v4, func(p []byte) { p[3]++ }), "", errLengthMismatch},
		{"ipv4 length short", edit(v4, func(p []byte) { p[3]-- }), "", errLengthMismatch},
		{"ipv4 trailing byte", append(bytes.Clone(v4), 0), "", errLengthMismatch},
		{"ipv6 length long", edit(v6, func(p []byte) { p[5]++ }), "", errLengthMismatch},
		{"ipv6 trailing byte", append(bytes.Clone(v6), 0), "", errLengthMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst, err := inspect(tc.pkt)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if tc.err == nil && dst.String() != tc.dst {
				t.Fatalf("dst = %s, want %s", dst, tc.dst)
			}
		})
	}
}

// FuzzInspect feeds arbitrary datagrams to the parser the datapath applies
// to everything received: it must never panic, and whatever it accepts
// must be one whole IP packet whose destination it reports.
func FuzzInspect(f *testing.F) {
	f.Add(ipv4UDP(netip.MustParseAddrPort("10.244.1.2:1"), netip.MustParseAddrPort("10.244.2.3:2"), 1, []byte("seed")))
	f.Add(ipv6Packet(netip.MustParseAddr("fd00::1"), 8))
	f.Add([]byte{})
	f.Add([]byte{0x45})
	f.Add([]byte{0x4f, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8})
	f.Add(bytes.Repeat([]byte{0x60}, 40))
	f.Fuzz(func(t *testing.T, b []byte) {
		dst, err := inspect(b)
		if err != nil {
			return
		}
		switch b[0] >> 4 {
		case 4:
			ihl := int(b[0]&0x0f) * 4
			if ihl < 20 || ihl > len(b) || int(binary.BigEndian.Uint16(b[2:])) != len(b) {
				t.Fatalf("accepted inconsistent IPv4 packet %x", b)
			}
			if dst != netip.AddrFrom4([4]byte(b[16:20])) {
				t.Fatalf("dst %s does not match header %x", dst, b[16:20])
			}
		case 6:
			if len(b) < 40 || int(binary.BigEndian.Uint16(b[4:]))+40 != len(b) {
				t.Fatalf("accepted inconsistent IPv6 packet %x", b)
			}
			if dst != netip.AddrFrom16([16]byte(b[24:40])) {
				t.Fatalf("dst %s does not match header %x", dst, b[24:40])
			}
		default:
			t.Fatalf("accepted version %d", b[0]>>4)
		}
	})
}
