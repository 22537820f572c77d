// Package udptunnel is the userspace datapath of the udp backend: it moves
// IP packets between a TUN device and a UDP socket, one raw IP packet per
// datagram (flannel's udp wire format, so the two interoperate).
//
// It is built for throughput: the TUN device is opened with a virtio-net
// header, so the kernel hands over 64 KiB TCP/UDP super-packets which are
// cut into MTU-sized packets in userspace and sent with UDP GSO (many
// datagrams per syscall); received datagrams come in batches, coalesced by
// UDP GRO, and are merged back into super-packets (TSO/GRO) before they
// are written to the TUN device. Each direction runs in its own goroutine.
//
// Tunnel.Ensure is level-triggered: the daemon calls it with the whole
// desired state on every reconcile.
//
// The device is persistent and outlives the process. While nothing has it
// open it has no carrier: its address and routes stay (routes are marked
// linkdown but still chosen), and the kernel drops what is routed to it at
// once, counting it in the device's TX dropped counter; nothing is queued.
// Attaching restores the carrier and forwarding resumes within a few
// milliseconds (see BenchmarkRestart).
package udptunnel

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/overlayd/overlayd/pkg/tunqueue"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
)

// DefaultPort is the udp backend's port, the same as flannel's.
const DefaultPort = 8285

// Spec is the desired state of the datapath.
type Spec struct {
	// Device is the TUN device's name, e.g. "overlay0". It must already
	// exist as a persistent TUN (see CreateDevice).
	Device string
	// Port is the UDP port both listened on and sent to.
	Port int
	// Peers maps each peer's pod subnet to that peer's public address and
	// port; port 0 means Port.
	Peers map[netip.Prefix]netip.AddrPort
	// Sources are further addresses datagrams are accepted from, besides
	// the peers': nodes that send to us over udp although we do not send to
	// them that way (they reach us by our backend, we reach them by theirs).
	Sources []netip.Addr
}

// Tunnel is the datapath. Its methods may be called from any goroutine;
// Ensure opens the device and socket in the calling thread's network
// namespace.
type Tunnel struct {
	log      *zap.Logger
	counters counters
	table    atomic.Pointer[table]
	skipped  atomic.Int64

	mu          sync.Mutex // guards the fields below
	session     *session
	tablePeers  map[netip.Prefix]netip.AddrPort
	tableSrcs   []netip.Addr
	tablePort   int
	attachments uint64
	buffers     buffers
	closed      bool
}

// New returns a stopped Tunnel; Ensure starts it.
func New(log *zap.Logger) *Tunnel {
	t := &Tunnel{log: log.Named("udptunnel")}
	t.table.Store(&table{})
	return t
}

// ErrClosed is returned by Ensure after Close.
var ErrClosed = errors.New("udptunnel: tunnel is closed")

// Ensure makes the datapath match spec. A nil spec stops it (the device is
// left as it is). It attaches to the device when not attached, re-attaches
// when the device was deleted (and recreated: its index changed) or the
// port changed, and swaps in the new peer table without pausing traffic.
// When nothing changed it costs one netlink lookup.
func (t *Tunnel) Ensure(spec *Spec) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	if spec == nil {
		t.stopLocked()
		return nil
	}
	if err := tunqueue.ValidDeviceName(spec.Device); err != nil {
		return fmt.Errorf("udptunnel: Spec.Device: %w", err)
	}
	if spec.Port < 1 || spec.Port > 65535 {
		return fmt.Errorf("udptunnel: Spec.Port %d out of range 1-65535", spec.Port)
	}

	// The table goes in first so a new datapath starts with it.
	if spec.Port != t.tablePort || !maps.Equal(spec.Peers, t.tablePeers) || !slices.Equal(spec.Sources, t.tableSrcs) {
		tbl, skipped := buildTable(spec.Peers, spec.Port, spec.Sources)
		for _, s := range skipped {
			t.log.Warn("skipping peer", zap.String("reason", s))
		}
		t.table.Store(tbl)
		t.skipped.Store(int64(len(skipped)))
		t.tablePeers = maps.Clone(spec.Peers)
		t.tableSrcs = slices.Clone(spec.Sources)
		t.tablePort = spec.Port
		t.log.Debug("peer table updated", zap.Int("peers", tbl.peers))
	}

	if s := t.session; s != nil {
		reason := ""
		switch {
		case s.device != spec.Device:
			reason = "device renamed"
		case s.port != spec.Port:
			reason = "port changed"
		case s.dead():
			reason = "device closed under the datapath"
		default:
			link, err := netlink.LinkByName(spec.Device)
			if err != nil {
				reason = "device gone"
			} else if link.Attrs().Index != s.ifindex {
				reason = "device recreated"
			}
		}
		if reason == "" {
			return nil
		}
		t.log.Info("re-attaching", zap.String("device", spec.Device), zap.String("reason", reason))
		t.stopLocked()
	}

	s, err := startSession(t, spec.Device, spec.Port, &t.buffers)
	if err != nil {
		return err
	}
	t.session = s
	t.attachments++
	t.log.Info("datapath attached", zap.String("device", spec.Device), zap.Int("ifindex", s.ifindex),
		zap.Int("port", spec.Port), zap.Bool("offloads", s.offloads))
	return nil
}

// stopLocked stops the running datapath, if any, and waits for it.
func (t *Tunnel) stopLocked() {
	if t.session == nil {
		return
	}
	t.session.stop()
	t.session = nil
}

// Stats returns the counters since New.
func (t *Tunnel) Stats() Stats {
	s := t.counters.snapshot()
	s.SkippedPeers = int(t.skipped.Load())
	t.mu.Lock()
	s.Attached = t.session != nil && !t.session.dead()
	s.Attachments = t.attachments
	t.mu.Unlock()
	return s
}

// AwaitSuccessor waits, up to timeout, until another process has joined
// the device this tunnel serves (a second queue open, and so its socket
// bound: startSession), as long as successor reports one running. It
// returns at once when the tunnel is not attached or no successor runs,
// and reports whether one joined. A surge upgrade calls it before Close,
// so that no packet finds a device nobody reads.
func (t *Tunnel) AwaitSuccessor(timeout time.Duration, successor func() bool) bool {
	t.mu.Lock()
	s := t.session
	t.mu.Unlock()
	if s == nil || s.dead() {
		return false
	}
	deadline := time.Now().Add(timeout)
	for successor() {
		if n, err := tunqueue.Queues(s.device); err == nil && n > 1 {
			return true
		}
		if time.Now().After(deadline) {
			t.log.Warn("another agent runs on this node but has not joined the datapath; letting go anyway",
				zap.String("device", s.device), zap.Duration("waited", timeout))
			return false
		}
		time.Sleep(successorPoll)
	}
	return false
}

// successorPoll is how often AwaitSuccessor looks.
const successorPoll = 10 * time.Millisecond

// Close stops the datapath and releases the device and socket. The device
// itself, its addresses and routes stay: a new Tunnel (or process)
// re-attaches to them.
func (t *Tunnel) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stopLocked()
	t.closed = true
	return nil
}
