package lab

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// The lab pings in process: a raw ICMP socket opened inside the sender's
// namespace, echo requests carrying a per-socket id and a sequence index,
// replies matched by id, source and index. That makes counts exact and
// costs no process per probe.

const payloadMagic = 0x6f766c6162706e67 // "ovlabpng"

var nextEchoID atomic.Uint32

func init() { nextEchoID.Store(rand.Uint32()) }

type echoSocket struct {
	conn   *icmp.PacketConn
	family *icmpFamily
	id     int
	from   string
	dst    netip.Addr
}

type echoReply struct {
	index uint64
}

// icmpFamily is what pinging over ICMPv4 and over ICMPv6 differ in.
type icmpFamily struct {
	network, listen string // of icmp.ListenPacket
	protocol        int    // of icmp.ParseMessage
	request, reply  icmp.Type
	// quotedICMP returns the ICMP message inside the packet an ICMP error
	// quotes, if that packet is of this family and carries ICMP.
	quotedICMP func(quoted []byte) ([]byte, bool)
}

var (
	icmpv4 = icmpFamily{network: "ip4:icmp", listen: "0.0.0.0", protocol: 1,
		request: ipv4.ICMPTypeEcho, reply: ipv4.ICMPTypeEchoReply, quotedICMP: quotedICMPv4}
	icmpv6 = icmpFamily{network: "ip6:ipv6-icmp", listen: "::", protocol: 58,
		request: ipv6.ICMPTypeEchoRequest, reply: ipv6.ICMPTypeEchoReply, quotedICMP: quotedICMPv6}
)

func quotedICMPv4(quoted []byte) ([]byte, bool) {
	if len(quoted) < 20 || quoted[0]>>4 != 4 {
		return nil, false
	}
	ihl := int(quoted[0]&0x0f) * 4
	if quoted[9] != 1 || len(quoted) < ihl+8 {
		return nil, false
	}
	return quoted[ihl:], true
}

// quotedICMPv6 expects ICMPv6 right after the 40-byte IPv6 header: the
// lab's echo requests carry no extension headers.
func quotedICMPv6(quoted []byte) ([]byte, bool) {
	const headerLen, nextHeader = 40, 6
	if len(quoted) < headerLen+8 || quoted[0]>>4 != 6 || quoted[nextHeader] != 58 {
		return nil, false
	}
	return quoted[headerLen:], true
}

func (h *Host) openEcho(dst netip.Addr) (*echoSocket, error) {
	if !dst.IsValid() {
		return nil, fmt.Errorf("ping from %s: no destination address", h.NS)
	}
	family := &icmpv4
	if dst.Is6() && !dst.Is4In6() {
		family = &icmpv6
	}
	dst = dst.Unmap()
	var conn *icmp.PacketConn
	err := h.Do(func() error {
		var err error
		conn, err = icmp.ListenPacket(family.network, family.listen)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("opening ICMP socket in %s: %w", h.NS, err)
	}
	if family == &icmpv6 {
		// A raw ICMPv6 socket also gets every neighbour discovery message:
		// let only what read looks at wake it.
		var f ipv6.ICMPFilter
		f.SetAll(true)
		for _, t := range []ipv6.ICMPType{ipv6.ICMPTypeEchoReply, ipv6.ICMPTypeDestinationUnreachable,
			ipv6.ICMPTypePacketTooBig, ipv6.ICMPTypeTimeExceeded} {
			f.Accept(t)
		}
		if err := conn.IPv6PacketConn().SetICMPFilter(&f); err != nil {
			conn.Close()
			return nil, fmt.Errorf("filtering the ICMPv6 socket in %s: %w", h.NS, err)
		}
	}
	return &echoSocket{conn: conn, family: family, id: int(nextEchoID.Add(1) & 0xffff), from: h.NS, dst: dst}, nil
}

func (s *echoSocket) close() { s.conn.Close() }

func (s *echoSocket) send(index uint64) error {
	data := make([]byte, 16)
	binary.BigEndian.PutUint64(data[0:], payloadMagic)
	binary.BigEndian.PutUint64(data[8:], index)
	msg := icmp.Message{
		Type: s.family.request,
		Body: &icmp.Echo{ID: s.id, Seq: int(index & 0xffff), Data: data},
	}
	// For ICMPv6 the kernel fills in the checksum (it covers the
	// pseudo-header, which only it knows).
	b, err := msg.Marshal(nil)
	if err != nil {
		return err
	}
	_, err = s.conn.WriteTo(b, &net.IPAddr{IP: net.IP(s.dst.AsSlice())})
	return err
}

// read returns the next echo reply for this socket, or an error describing
// an ICMP error about our echoes (unreachable, time exceeded, packet too
// big), or the read error (e.g. the deadline).
func (s *echoSocket) read(buf []byte) (echoReply, error) {
	for {
		n, peer, err := s.conn.ReadFrom(buf)
		if err != nil {
			return echoReply{}, err
		}
		msg, err := icmp.ParseMessage(s.family.protocol, buf[:n])
		if err != nil {
			continue
		}
		peerIP, _ := netip.AddrFromSlice(peer.(*net.IPAddr).IP)
		peerIP = peerIP.Unmap()
		switch body := msg.Body.(type) {
		case *icmp.Echo:
			if msg.Type != s.family.reply || body.ID != s.id || peerIP != s.dst || len(body.Data) < 16 ||
				binary.BigEndian.Uint64(body.Data) != payloadMagic {
				continue
			}
			return echoReply{index: binary.BigEndian.Uint64(body.Data[8:])}, nil
		case *icmp.DstUnreach:
			if s.isOurs(body.Data) {
				return echoReply{}, &icmpError{what: fmt.Sprintf("destination unreachable (code %d)", msg.Code), from: peerIP}
			}
		case *icmp.TimeExceeded:
			if s.isOurs(body.Data) {
				return echoReply{}, &icmpError{what: "time exceeded", from: peerIP}
			}
		case *icmp.PacketTooBig:
			if s.isOurs(body.Data) {
				return echoReply{}, &icmpError{what: fmt.Sprintf("packet too big (MTU %d)", body.MTU), from: peerIP}
			}
		}
	}
}

// isOurs reports whether the packet quoted in an ICMP error is one of our
// echo requests.
func (s *echoSocket) isOurs(quoted []byte) bool {
	icmpHdr, ok := s.family.quotedICMP(quoted)
	if !ok {
		return false
	}
	return icmpHdr[0] == typeByte(s.family.request) && int(binary.BigEndian.Uint16(icmpHdr[4:])) == s.id
}

// typeByte is an ICMP type as it is on the wire.
func typeByte(t icmp.Type) byte {
	switch t := t.(type) {
	case ipv4.ICMPType:
		return byte(t)
	case ipv6.ICMPType:
		return byte(t)
	}
	panic(fmt.Sprintf("lab: ICMP type %v of no family", t))
}

type icmpError struct {
	what string
	from netip.Addr
}

func (e *icmpError) Error() string { return e.what + " from " + e.from.String() }
