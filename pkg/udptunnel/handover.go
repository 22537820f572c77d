package udptunnel

import (
	"fmt"
	"time"

	"github.com/overlayd/overlayd/pkg/reuseport"
	"github.com/overlayd/overlayd/pkg/tunqueue"

	"go.uber.org/zap"
)

const (
	// drainTimeout bounds how long a handover waits for its queues to go
	// quiet; far more than reading them takes.
	drainTimeout = 500 * time.Millisecond
	// drainPoll is how often it looks, and drainQuiet how many looks in a
	// row must find nothing queued and nothing read.
	drainPoll  = 2 * time.Millisecond
	drainQuiet = 3
)

// HandOver stops the datapath for a successor that has joined it (see
// AwaitSuccessor) without losing what is queued for this one, and closes
// the Tunnel. Letting go of a queue or socket the kernel still delivers to
// drops whatever waits in it, so it first steers new packets and datagrams
// to the successor (the member that joined last), reads its own queues
// empty, and only then closes them. If steering fails it logs why and
// closes as Close does.
func (t *Tunnel) HandOver() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.session; s != nil && !s.dead() {
		if err := s.steerAndDrain(); err != nil {
			t.log.Warn("handing the datapath over without draining it; what is queued for this agent is lost", zap.Error(err))
		}
	}
	t.stopLocked()
	t.closed = true
	return nil
}

// steerTUN is tunqueue.SteerToNewest; a test replaces it to see the
// handover without it.
var steerTUN = tunqueue.SteerToNewest

// steerAndDrain steers new traffic to the successor and waits until this
// session has nothing left to read; the caller then stops it.
func (s *session) steerAndDrain() error {
	if n, err := tunqueue.Queues(s.device); err != nil {
		return err
	} else if n != 2 {
		// Steering sends to the newest of exactly two members.
		return fmt.Errorf("%d queues open on %s, want 2 (this agent and its successor)", n, s.device)
	}
	if len(s.sockets) == 0 {
		return fmt.Errorf("the UDP sockets' descriptors are unknown")
	}
	for _, fd := range s.sockets {
		if err := reuseport.SteerToNewest(fd); err != nil {
			return err
		}
	}
	if err := steerTUN(s.dev); err != nil {
		// Without it the kernel still moves a flow to the queue that last
		// wrote a packet of it, so flows with replies follow the socket's
		// steering to the successor; a flow with no replies keeps coming
		// here, and the drain below gives up on it.
		s.log.Warn("cannot steer the TUN device's packets to the successor (loading a BPF program needs CAP_BPF); draining without it", zap.Error(err))
	}
	drained, err := s.drain()
	if err != nil {
		return err
	}
	s.log.Info("steered the datapath to the successor and read its queues empty", zap.Duration("took", drained))
	return nil
}

// drain waits until nothing is queued for this session (its sockets' receive
// queues and its TUN queue are empty) and every batch its goroutines read
// has been handled, for drainQuiet polls in a row: the steering programs
// send everything new to the successor, so what is left is what arrived
// before them.
func (s *session) drain() (time.Duration, error) {
	start := time.Now()
	quiet := 0
	last := [2]uint64{s.rxRead.Load(), s.txRead.Load()}
	for quiet < drainQuiet {
		if time.Since(start) > drainTimeout {
			return 0, fmt.Errorf("the datapath's queues did not go quiet within %s of steering", drainTimeout)
		}
		time.Sleep(drainPoll)
		idle, err := s.idle()
		if err != nil {
			return 0, err
		}
		now := [2]uint64{s.rxRead.Load(), s.txRead.Load()}
		if idle && now == last {
			quiet++
		} else {
			quiet = 0
		}
		last = now
	}
	return time.Since(start), nil
}

// idle reports whether nothing waits in the session's queues and its
// goroutines have handled everything they read.
func (s *session) idle() (bool, error) {
	if s.rxRead.Load() != s.rxDone.Load() || s.txRead.Load() != s.txDone.Load() {
		return false, nil
	}
	for _, fd := range s.sockets {
		if n, err := reuseport.Queued(fd); err != nil || n > 0 {
			return false, err
		}
	}
	pending, err := tunqueue.Pending(s.dev)
	return !pending && err == nil, err
}
