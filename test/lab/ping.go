package lab

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// The lab pings in process: a raw ICMP socket opened inside the sender's
// namespace, echo requests carrying a per-socket id and a sequence index,
// replies matched by id, source and index. That makes counts exact and
// costs no process per probe.

const payloadMagic = 0x6f766c6162706e67 // "ovlabpng"

var nextEchoID atomic.Uint32

func init() { nextEchoID.Store(rand.Uint32()) }

type echoSocket struct {
	conn *icmp.PacketConn
	id   int
	from string
	dst  netip.Addr
}

type echoReply struct {
	index uint64
}

func (h *Host) openEcho(dst netip.Addr) (*echoSocket, error) {
	if !dst.Is4() {
		return nil, fmt.Errorf("ping %s: only IPv4 is supported", dst)
	}
	var conn *icmp.PacketConn
	err := h.Do(func() error {
		var err error
		conn, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("opening ICMP socket in %s: %w", h.NS, err)
	}
	return &echoSocket{conn: conn, id: int(nextEchoID.Add(1) & 0xffff), from: h.NS, dst: dst}, nil
}

func (s *echoSocket) close() { s.conn.Close() }

func (s *echoSocket) send(index uint64) error {
	data := make([]byte, 16)
	binary.BigEndian.PutUint64(data[0:], payloadMagic)
	binary.BigEndian.PutUint64(data[8:], index)
	msg := icmp.Message{
		Type: ipv4.ICMPTypeEcho,
		Body: &icmp.Echo{ID: s.id, Seq: int(index & 0xffff), Data: data},
	}
	b, err := msg.Marshal(nil)
	if err != nil {
		return err
	}
	_, err = s.conn.WriteTo(b, &net.IPAddr{IP: net.IP(s.dst.AsSlice())})
	return err
}

// read returns the next echo reply for this socket, or an error describing
// an ICMP error about our echoes (unreachable, time exceeded), or the read
// error (e.g. the deadline).
func (s *echoSocket) read(buf []byte) (echoReply, error) {
	for {
		n, peer, err := s.conn.ReadFrom(buf)
		if err != nil {
			return echoReply{}, err
		}
		msg, err := icmp.ParseMessage(1, buf[:n])
		if err != nil {
			continue
		}
		peerIP, _ := netip.AddrFromSlice(peer.(*net.IPAddr).IP)
		peerIP = peerIP.Unmap()
		switch body := msg.Body.(type) {
		case *icmp.Echo:
			if msg.Type != ipv4.ICMPTypeEchoReply || body.ID != s.id || peerIP != s.dst || len(body.Data) < 16 ||
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
		}
	}
}

// isOurs reports whether the packet quoted in an ICMP error is one of our
// echo requests.
func (s *echoSocket) isOurs(quoted []byte) bool {
	if len(quoted) < 20 {
		return false
	}
	ihl := int(quoted[0]&0x0f) * 4
	if quoted[9] != 1 || len(quoted) < ihl+8 {
		return false
	}
	icmpHdr := quoted[ihl:]
	return icmpHdr[0] == byte(ipv4.ICMPTypeEcho) && int(binary.BigEndian.Uint16(icmpHdr[4:])) == s.id
}

type icmpError struct {
	what string
	from netip.Addr
}

func (e *icmpError) Error() string { return e.what + " from " + e.from.String() }

// Ping sends an echo request every 100ms until one is answered (nil) or
// ctx ends (an error saying what was seen). It is the "eventually
// reachable" check: give ctx a deadline.
func (h *Host) Ping(ctx context.Context, dst netip.Addr) error {
	s, err := h.openEcho(dst)
	if err != nil {
		return err
	}
	defer s.close()
	const every = 100 * time.Millisecond
	buf := make([]byte, 1500)
	var sent uint64
	var last error
	start := time.Now()
	for {
		if err := s.send(sent); err != nil {
			last = err
		}
		sent++
		next := time.Now().Add(every)
		for {
			deadline := next
			if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
				deadline = d
			}
			s.conn.SetReadDeadline(deadline)
			_, err := s.read(buf)
			if err == nil {
				return nil
			}
			var ie *icmpError
			if errors.As(err, &ie) {
				last = err
				continue
			}
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("ping %s from %s: %w", dst, h.NS, err)
			}
			break
		}
		if ctx.Err() != nil {
			msg := fmt.Sprintf("ping %s from %s: no echo reply to %d requests in %s", dst, h.NS, sent, time.Since(start).Round(time.Millisecond))
			if last != nil {
				msg += "; last: " + last.Error()
			}
			return errors.New(msg)
		}
	}
}

// PingWithin is Ping with a timeout.
func (h *Host) PingWithin(dst netip.Addr, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return h.Ping(ctx, dst)
}

// PingStats are a Pinger's counts. After Stop they are exact: every echo
// request sent was either answered (Received) or not (Lost).
type PingStats struct {
	Sent, Received, Lost int
	// SendErrors were requests the kernel refused to send (e.g. no route);
	// they are counted in Sent and Lost.
	SendErrors int
	Duplicates int
	// MaxConsecutiveLost is the longest run of unanswered requests; times
	// Interval it bounds the longest outage.
	MaxConsecutiveLost int
	Interval           time.Duration
}

func (s PingStats) String() string {
	return fmt.Sprintf("sent %d, received %d, lost %d (longest run %d = %s), send errors %d, duplicates %d",
		s.Sent, s.Received, s.Lost, s.MaxConsecutiveLost, time.Duration(s.MaxConsecutiveLost)*s.Interval, s.SendErrors, s.Duplicates)
}

// Pinger sends echo requests at a fixed interval until stopped.
type Pinger struct {
	From     *Host
	To       netip.Addr
	Interval time.Duration

	s        *echoSocket
	stopc    chan struct{}
	sendDone chan struct{}
	readDone chan struct{}
	stopOnce sync.Once
	final    PingStats

	mu         sync.Mutex
	changed    chan struct{} // closed and replaced on every reply
	got        []bool        // by index
	sentAt     []time.Time   // by index
	received   int
	sendErrors int
	dups       int
}

// StartPinger starts sending echo requests from h to dst every interval
// (e.g. 10ms: 100/s). The lab stops it on Close.
func (h *Host) StartPinger(dst netip.Addr, interval time.Duration) (*Pinger, error) {
	if interval < time.Millisecond {
		return nil, fmt.Errorf("pinger interval %s: want at least 1ms", interval)
	}
	s, err := h.openEcho(dst)
	if err != nil {
		return nil, err
	}
	p := &Pinger{From: h, To: dst, Interval: interval, s: s,
		stopc: make(chan struct{}), sendDone: make(chan struct{}), readDone: make(chan struct{}), changed: make(chan struct{})}
	if h.lab != nil {
		h.lab.mu.Lock()
		closed := h.lab.closed
		if !closed {
			h.lab.pingers = append(h.lab.pingers, p)
		}
		h.lab.mu.Unlock()
		if closed {
			s.close()
			return nil, errors.New("lab is closed")
		}
	}
	go p.sendLoop()
	go p.readLoop()
	return p, nil
}

func (p *Pinger) sendLoop() {
	defer close(p.sendDone)
	tick := time.NewTicker(p.Interval)
	defer tick.Stop()
	for {
		p.mu.Lock()
		index := uint64(len(p.got))
		p.got = append(p.got, false)
		p.sentAt = append(p.sentAt, time.Now())
		p.mu.Unlock()
		if err := p.s.send(index); err != nil {
			p.mu.Lock()
			p.sendErrors++
			p.mu.Unlock()
		}
		select {
		case <-p.stopc:
			return
		case <-tick.C:
		}
	}
}

func (p *Pinger) readLoop() {
	defer close(p.readDone)
	buf := make([]byte, 1500)
	for {
		r, err := p.s.read(buf)
		var ie *icmpError
		if errors.As(err, &ie) {
			continue
		}
		if err != nil {
			return // socket closed
		}
		p.mu.Lock()
		switch {
		case r.index >= uint64(len(p.got)):
		case p.got[r.index]:
			p.dups++
		default:
			p.got[r.index] = true
			p.received++
			close(p.changed)
			p.changed = make(chan struct{})
		}
		p.mu.Unlock()
	}
}

// Stats returns the counts so far; requests still in flight count as lost.
func (p *Pinger) Stats() PingStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.statsLocked()
}

func (p *Pinger) statsLocked() PingStats {
	st := PingStats{Sent: len(p.got), Received: p.received, SendErrors: p.sendErrors, Duplicates: p.dups, Interval: p.Interval}
	st.Lost = st.Sent - st.Received
	run := 0
	for _, ok := range p.got {
		if ok {
			run = 0
			continue
		}
		run++
		st.MaxConsecutiveLost = max(st.MaxConsecutiveLost, run)
	}
	return st
}

// LossRun is a run of consecutive unanswered requests.
type LossRun struct {
	Start time.Time // when the first of them was sent
	Count int
}

// LossRuns lists the runs of unanswered requests, for telling when an
// outage happened; requests still in flight count as lost.
func (p *Pinger) LossRuns() []LossRun {
	p.mu.Lock()
	defer p.mu.Unlock()
	var runs []LossRun
	for i, ok := range p.got {
		switch {
		case ok:
		case i > 0 && !p.got[i-1]:
			runs[len(runs)-1].Count++
		default:
			runs = append(runs, LossRun{Start: p.sentAt[i], Count: 1})
		}
	}
	return runs
}

// WaitReceived waits until at least n replies have arrived in all.
func (p *Pinger) WaitReceived(ctx context.Context, n int) error {
	for {
		p.mu.Lock()
		got, changed := p.received, p.changed
		p.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pinger %s -> %s: %d of %d replies: %w", p.From.NS, p.To, got, n, ctx.Err())
		case <-changed:
		case <-p.readDone:
			return fmt.Errorf("pinger %s -> %s stopped", p.From.NS, p.To)
		}
	}
}

// Stop stops sending, waits for the replies still in flight (up to a
// second, or 20 intervals if longer) and returns the final, exact counts.
func (p *Pinger) Stop() PingStats {
	p.stopOnce.Do(func() {
		close(p.stopc)
		<-p.sendDone
		drain := time.NewTimer(max(time.Second, 20*p.Interval))
		defer drain.Stop()
		for {
			p.mu.Lock()
			done, changed := p.received == len(p.got), p.changed
			p.mu.Unlock()
			if done {
				break
			}
			select {
			case <-changed:
				continue
			case <-drain.C:
			}
			break
		}
		p.s.close()
		<-p.readDone
		p.mu.Lock()
		p.final = p.statsLocked()
		p.mu.Unlock()
	})
	return p.final
}
