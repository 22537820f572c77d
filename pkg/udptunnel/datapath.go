package udptunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/overlayd/overlayd/pkg/tunqueue"

	"go.uber.org/zap"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
)

const (
	// batchSize is the number of packets per TUN read and per UDP receive.
	// StdNetBind's GRO receive path needs exactly its BatchSize buffers.
	batchSize = conn.IdealBatchSize
	// headroom is left in front of each received packet: the TUN write puts
	// the virtio-net header there.
	headroom = 16
	// bufferSize fits the largest IP packet, which is also the largest
	// super-packet that UDP GRO or TUN-side GRO builds in a buffer. The GRO
	// capacity check counts the offset twice, hence 2*headroom.
	bufferSize = 65535 + 2*headroom
	// errorPause keeps a loop from spinning on an error that repeats.
	errorPause = time.Millisecond
	// logEvery limits how often a repeating datapath error is logged.
	logEvery = 10 * time.Second
)

// buffers are the packet buffers of a Tunnel, kept across re-attachments so
// that attaching again allocates nothing. Each set is allocated by the
// goroutine that uses it, so attaching returns without waiting for memory.
// Only one session uses them at a time: a session is stopped (its
// goroutines have returned) before the next one starts.
type buffers struct {
	tx [][]byte   // TUN → UDP
	rx [][][]byte // UDP → TUN, one set per receive function (IPv4, IPv6)
}

// batch returns *set, allocating it on first use.
func batch(set *[][]byte) [][]byte {
	if *set == nil {
		*set = makeBatch()
	}
	return *set
}

// makeBatch allocates batchSize buffers in one block. Each buffer's capacity
// ends where the next begins, because both offload paths grow a packet in
// place by appending to its buffer. Pages are only touched when used.
func makeBatch() [][]byte {
	block := make([]byte, batchSize*bufferSize)
	bufs := make([][]byte, batchSize)
	for i := range bufs {
		bufs[i] = block[i*bufferSize : (i+1)*bufferSize : (i+1)*bufferSize]
	}
	return bufs
}

// session is one attachment: the open TUN device, the UDP socket and the
// goroutines moving packets between them.
type session struct {
	t        *Tunnel
	log      *zap.Logger
	device   string
	ifindex  int
	port     int
	offloads bool

	dev     tun.Device
	bind    conn.Bind
	sockets []int          // bind's descriptors, valid until bind.Close
	rx, tx  sync.WaitGroup // the UDP → TUN goroutines, the TUN → UDP one
	// Batches read from the socket and from the device, and those of them
	// handled (written to the device, sent to peers): the handover's drain
	// waits until every batch read has been handled.
	rxRead, rxDone, txRead, txDone atomic.Uint64

	closing atomic.Bool // set by stop: errors from here on are expected
	gone    atomic.Bool // the device was closed under us (deleted)

	sendLog, recvLog, readLog, writeLog rateLimit
}

// startSession listens on the port, then attaches a queue of the device:
// a queue of ours open means our socket is too (what a predecessor waits
// for before it lets go, see Tunnel.AwaitSuccessor).
func startSession(t *Tunnel, device string, port int, bufs *buffers) (*session, error) {
	bind := conn.NewStdNetBind()
	var receivers []conn.ReceiveFunc
	sockets, err := opening.open(port, func() (err error) {
		receivers, _, err = bind.Open(uint16(port))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on UDP port %d: %w", port, err)
	}
	if bind.BatchSize() != batchSize {
		bind.Close()
		return nil, fmt.Errorf("UDP socket batch size %d, want %d", bind.BatchSize(), batchSize)
	}
	dev, ifindex, err := tunqueue.Attach(device)
	if err != nil {
		bind.Close()
		return nil, err
	}
	s := &session{
		t: t, log: t.log.With(zap.String("device", device)),
		device: device, ifindex: ifindex, port: port,
		offloads: dev.BatchSize() > 1,
		dev:      dev, bind: bind, sockets: sockets,
	}
	for len(bufs.rx) < len(receivers) {
		bufs.rx = append(bufs.rx, nil)
	}
	s.tx.Add(1)
	s.rx.Add(len(receivers))
	go s.tunToUDP(&bufs.tx)
	for i, receive := range receivers {
		go s.udpToTUN(receive, &bufs.rx[i])
	}
	return s, nil
}

// stop closes the socket and the device and waits for the goroutines. The
// socket first: its receivers finish writing what they read to the device,
// which is still open (a handover has drained the socket, and this loses
// none of it).
func (s *session) stop() {
	s.closing.Store(true)
	s.bind.Close()
	s.rx.Wait()
	s.dev.Close()
	s.tx.Wait()
}

// dead reports whether the device went away under the datapath.
func (s *session) dead() bool { return s.gone.Load() }

// tunToUDP reads packets the kernel routed to the device and sends each to
// the peer owning its destination.
func (s *session) tunToUDP(set *[][]byte) {
	defer s.tx.Done()
	bufs := batch(set)[:min(s.dev.BatchSize(), batchSize)]
	sizes := make([]int, len(bufs))
	run := make([][]byte, 0, len(bufs))
	for {
		n, err := s.dev.Read(bufs, sizes, 0)
		s.txRead.Add(1)
		if n > 0 {
			run = s.forward(bufs[:n], sizes, run)
		}
		s.txDone.Add(1)
		if err == nil {
			continue
		}
		if s.closing.Load() {
			return
		}
		if errors.Is(err, os.ErrClosed) {
			s.gone.Store(true)
			// Normal when the reconciler removes a device no longer in use,
			// a repair to come when someone else deleted it.
			s.log.Info("TUN device closed under the datapath; waiting for the next Ensure to re-attach")
			return
		}
		// ErrTooManySegments and checksum/offload complaints lose one read.
		s.t.counters.drop(DropTUNReadError, 1)
		if s.readLog.allow() {
			s.log.Warn("reading from TUN device", zap.Error(err))
		}
		time.Sleep(errorPause)
	}
}

// forward sends the packets in bufs (lengths in sizes) to their peers,
// batching consecutive packets for the same peer into one send. run is
// scratch space, returned for reuse.
func (s *session) forward(bufs [][]byte, sizes []int, run [][]byte) [][]byte {
	tbl := s.t.table.Load()
	var (
		runPeer  *peer
		lastDst  netip.Addr
		lastPeer *peer
		noRoute  int
		local    int
		bad      int
	)
	run = run[:0]
	for i := range bufs {
		pkt := bufs[i][:sizes[i]]
		dst, err := inspect(pkt)
		if err != nil {
			bad++
			continue
		}
		// A super-packet splits into many packets for one destination.
		if dst != lastDst {
			lastDst, lastPeer = dst, tbl.lookup(dst)
		}
		if lastPeer == nil {
			if routable(dst) {
				noRoute++
			} else {
				local++
			}
			continue
		}
		if lastPeer != runPeer && len(run) > 0 {
			s.send(run, runPeer)
			run = run[:0]
		}
		runPeer = lastPeer
		run = append(run, pkt)
	}
	if len(run) > 0 {
		s.send(run, runPeer)
	}
	s.t.counters.drop(DropNoRoute, noRoute)
	s.t.counters.drop(DropNotRoutable, local)
	s.t.counters.drop(DropMalformed, bad)
	return run
}

// routable reports whether dst could belong to a peer's pod subnet.
func routable(dst netip.Addr) bool {
	return !dst.IsMulticast() && !dst.IsLinkLocalUnicast() && !dst.IsUnspecified() &&
		dst != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// send hands packets for one peer to the socket; with UDP GSO equal-sized
// packets leave in a single sendmmsg entry.
func (s *session) send(pkts [][]byte, p *peer) {
	bytes := 0
	for _, b := range pkts {
		bytes += len(b)
	}
	err := s.bind.Send(pkts, p.ep)
	var gsoOff conn.ErrUDPGSODisabled
	if errors.As(err, &gsoOff) {
		s.log.Warn("UDP segmentation offload refused by the kernel; sending without it", zap.Error(err))
		err = gsoOff.RetryErr
	}
	if err != nil {
		if s.closing.Load() {
			return
		}
		s.t.counters.drop(DropSendError, len(pkts))
		if s.sendLog.allow() {
			s.log.Warn("sending to peer", zap.Stringer("peer", p.addr), zap.Error(err))
		}
		return
	}
	s.t.counters.tx(len(pkts), bytes)
}

// udpToTUN receives datagrams, keeps those from current peers that hold one
// whole IP packet, and writes them to the device in one batch (which the
// TUN side merges back into super-packets).
func (s *session) udpToTUN(receive conn.ReceiveFunc, set *[][]byte) {
	defer s.rx.Done()
	bufs := batch(set)
	// Datagrams land after the headroom; the TUN write gets whole buffers.
	into := make([][]byte, len(bufs))
	for i := range bufs {
		into[i] = bufs[i][headroom:]
	}
	sizes := make([]int, len(bufs))
	eps := make([]conn.Endpoint, len(bufs))
	out := make([][]byte, 0, len(bufs))
	for {
		n, err := receive(into, sizes, eps)
		s.rxRead.Add(1)
		if err != nil {
			s.rxDone.Add(1)
			if s.closing.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			s.t.counters.drop(DropReceiveError, 1)
			if s.recvLog.allow() {
				s.log.Warn("receiving from UDP socket", zap.Error(err))
			}
			time.Sleep(errorPause)
			continue
		}
		tbl := s.t.table.Load()
		var (
			lastSrc   netip.Addr
			lastKnown bool
			unknown   int
			bad       int
			bytes     int
		)
		out = out[:0]
		for i := 0; i < n; i++ {
			if sizes[i] == 0 {
				continue
			}
			// Split GRO segments share one source.
			if src := eps[i].DstIP().Unmap(); src != lastSrc {
				lastSrc, lastKnown = src, tbl.knownSource(src)
			}
			if !lastKnown {
				unknown++
				continue
			}
			if _, err := inspect(bufs[i][headroom : headroom+sizes[i]]); err != nil {
				bad++
				continue
			}
			out = append(out, bufs[i][:headroom+sizes[i]])
			bytes += sizes[i]
		}
		s.t.counters.drop(DropUnknownSource, unknown)
		s.t.counters.drop(DropMalformed, bad)
		ok := len(out) == 0 || s.write(out, bytes)
		s.rxDone.Add(1)
		if !ok {
			return
		}
	}
}

// write puts a batch into the device; false means the device is gone.
func (s *session) write(pkts [][]byte, bytes int) bool {
	count := len(pkts) // Write may merge pkts in place
	_, err := s.dev.Write(pkts, headroom)
	if err == nil {
		s.t.counters.rx(count, bytes)
		return true
	}
	if s.closing.Load() {
		return false
	}
	if errors.Is(err, os.ErrClosed) {
		s.gone.Store(true)
		s.t.counters.drop(DropTUNWriteError, count)
		return false
	}
	// Write reports one joined error per refused write; a merged
	// super-packet counts once, so this is a lower bound.
	failed := 1
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		failed = min(len(joined.Unwrap()), count)
	}
	s.t.counters.drop(DropTUNWriteError, failed)
	s.t.counters.rx(count-failed, 0)
	if s.writeLog.allow() {
		s.log.Warn("writing to TUN device", zap.Error(err))
	}
	return true
}

// rateLimit lets an event through at most once per logEvery.
type rateLimit struct{ last atomic.Int64 }

func (r *rateLimit) allow() bool {
	now := time.Now().UnixNano()
	last := r.last.Load()
	return (last == 0 || now-last >= int64(logEvery)) && r.last.CompareAndSwap(last, now)
}
