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
		if err := s.handOver(); err != nil {
			t.log.Warn("handing the datapath over without draining it; what is queued for this agent is lost", zap.Error(err))
		}
	}
	t.stopLocked()
	t.closed = true
	return nil
}

// handOver steers, drains and stops the session. On error the session
// still runs and the caller stops it.
func (s *session) handOver() error {
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
	if err := tunqueue.SteerToNewest(s.dev); err != nil {
		return err
	}
	drained, err := s.drain()
	if err != nil {
		return err
	}
	s.log.Info("steered the datapath to the successor and read its queues empty", zap.Duration("took", drained))
	s.closing.Store(true)
	// The socket first: its receivers finish writing what they read to the
	// device, which is still open.
	s.bind.Close()
	s.rx.Wait()
	s.dev.Close()
	s.tx.Wait()
	return nil
}

// drain waits until this session's sockets have nothing queued and neither
// direction has read anything for drainQuiet polls: the steering programs
// send everything new to the successor, so what is left is what arrived
// before them.
func (s *session) drain() (time.Duration, error) {
	start := time.Now()
	quiet := 0
	lastRx, lastTx := s.rxCount.Load(), s.txCount.Load()
	for quiet < drainQuiet {
		if time.Since(start) > drainTimeout {
			return 0, fmt.Errorf("the datapath's queues did not go quiet within %s of steering", drainTimeout)
		}
		time.Sleep(drainPoll)
		queued := 0
		for _, fd := range s.sockets {
			n, err := reuseport.Queued(fd)
			if err != nil {
				return 0, err
			}
			queued += n
		}
		rx, tx := s.rxCount.Load(), s.txCount.Load()
		if queued == 0 && rx == lastRx && tx == lastTx {
			quiet++
		} else {
			quiet = 0
		}
		lastRx, lastTx = rx, tx
	}
	return time.Since(start), nil
}
