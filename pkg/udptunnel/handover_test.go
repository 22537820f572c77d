package udptunnel

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/pkg/tunqueue"
)

// A surge upgrade hands the datapath over: the successor joins, the old
// agent steers everything to it, reads its own queues empty and closes.
// Under steady streams both ways through node 0 (16 flows each, about
// 8000 datagrams a second per direction) five handovers in a row lose
// nothing: every datagram sent arrives.
func TestHandOverLosesNothing(t *testing.T) {
	in, out := handOverUnderLoad(t, "handovr")
	for _, s := range []*stream{in, out} {
		s.requireAllArrived(t)
	}
}

// Without the TUN steering program (an agent without CAP_BPF) the socket is
// still steered and drained: nothing sent to this node over udp is lost.
// (Packets this node sends on flows without replies may be: the drain
// gives up on them after its timeout.)
func TestHandOverWithoutTUNSteering(t *testing.T) {
	steerTUN = func(tun.Device) error { return unix.EPERM }
	t.Cleanup(func() { steerTUN = tunqueue.SteerToNewest })
	in, out := handOverUnderLoad(t, "handnobf")
	in.requireAllArrived(t)
	sent := out.stop()
	t.Logf("%s (not asserted): %d of %d datagrams arrived", out.name, out.received(), sent)
}

// handOverUnderLoad runs five handovers on node 0 under a stream each way
// and returns the streams, still sending.
func handOverUnderLoad(t *testing.T, tag string) (in, out *stream) {
	c := newCluster(t, tag, overlayUDP)
	ts := c.startTunnels()
	c.waitPing(0, 1)
	c.waitPing(1, 0)

	in = startStream(t, c, 1, 0)  // node 1 → node 0: UDP socket → TUN on node 0
	out = startStream(t, c, 0, 1) // node 0 → node 1: TUN → UDP socket on node 0
	old := ts[0]
	for round := 1; round <= 5; round++ {
		time.Sleep(100 * time.Millisecond) // traffic through the current agent alone
		next := c.startTunnel(0, c.spec(0))
		var joined bool
		var err error
		if err := kernel.InNamespace(c.nodes[0].handle, func() error {
			joined = old.AwaitSuccessor(time.Second, func() bool { return true })
			if joined {
				err = old.HandOver()
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if !joined {
			t.Fatalf("round %d: the successor did not join", round)
		}
		if err != nil {
			t.Fatalf("round %d: HandOver: %v", round, err)
		}
		old = next
	}
	time.Sleep(100 * time.Millisecond)
	return in, out
}

// requireAllArrived stops the stream and fails unless every datagram sent
// arrived.
func (s *stream) requireAllArrived(t *testing.T) {
	t.Helper()
	sent := s.stop()
	// Polled, so that a loss is reported with its count.
	for deadline := time.Now().Add(5 * time.Second); s.received() < sent && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if got := s.received(); got != sent {
		t.Errorf("%s: %d of %d datagrams arrived across 5 handovers", s.name, got, sent)
	} else {
		t.Logf("%s: %d of %d datagrams arrived across 5 handovers", s.name, got, sent)
	}
}

// stream sends numbered datagrams from node from's pod to node to's pod
// over 16 flows, and counts the distinct numbers that arrive.
type stream struct {
	name    string
	done    chan struct{}
	wg      sync.WaitGroup
	sent    atomic.Uint64
	mu      sync.Mutex
	seen    map[uint64]bool
	receive *net.UDPConn
}

func startStream(t *testing.T, c *cluster, from, to int) *stream {
	t.Helper()
	s := &stream{name: c.nodes[from].ns + " → " + c.nodes[to].ns, done: make(chan struct{}), seen: map[uint64]bool{}}
	dst := netip.AddrPortFrom(c.nodes[to].podAddr, 9000)
	rx, err := udpSocket(c.nodes[to].pHandle, dst)
	if err != nil {
		t.Fatal(err)
	}
	rx.SetReadBuffer(4 << 20)
	s.receive = rx
	t.Cleanup(func() { rx.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			n, err := rx.Read(buf)
			if err != nil {
				return
			}
			if n == 8 {
				s.mu.Lock()
				s.seen[binary.BigEndian.Uint64(buf)] = true
				s.mu.Unlock()
			}
		}
	}()
	var flows []*net.UDPConn
	for i := range 16 {
		conn, err := udpSocket(c.nodes[from].pHandle, netip.AddrPortFrom(c.nodes[from].podAddr, uint16(30000+i)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		flows = append(flows, conn)
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		var b [8]byte
		for {
			select {
			case <-s.done:
				return
			case <-tick.C:
			}
			for _, conn := range flows {
				binary.BigEndian.PutUint64(b[:], s.sent.Load())
				if _, err := conn.WriteToUDPAddrPort(b[:], dst); err == nil {
					s.sent.Add(1)
				}
			}
		}
	}()
	return s
}

// stop ends the sending and returns how many datagrams were sent.
func (s *stream) stop() uint64 {
	close(s.done)
	s.wg.Wait()
	return s.sent.Load()
}

func (s *stream) received() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return uint64(len(s.seen))
}
