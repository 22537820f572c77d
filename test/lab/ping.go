package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"
)

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
		// By the clock too: a context is cancelled by a timer that may run
		// late, and until then every read would time out at once.
		if d, ok := ctx.Deadline(); ctx.Err() != nil || ok && !time.Now().Before(d) {
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

// LostFrom counts the requests from the nth sent on (0-based) that have no
// reply: the loss of a window that began when n requests had been sent,
// judged now, so that requests still in flight when the window began are
// not taken for lost (Stats at that moment would count them).
func (p *Pinger) LostFrom(n int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	lost := 0
	for _, ok := range p.got[min(n, len(p.got)):] {
		if !ok {
			lost++
		}
	}
	return lost
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
