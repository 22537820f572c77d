package udptunnel

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/overlayd/overlayd/pkg/metrics"
)

// DropReason says why the datapath discarded packets.
type DropReason string

const (
	// DropNoRoute: a packet from the TUN device for an address no peer owns.
	DropNoRoute DropReason = "no_route"
	// DropNotRoutable: a packet from the TUN device for a multicast,
	// broadcast or link-local address, such as the kernel's own IPv6
	// neighbour discovery on the device; a routed tunnel never carries those.
	DropNotRoutable DropReason = "not_routable"
	// DropUnknownSource: a datagram whose source is not a current peer's
	// public address.
	DropUnknownSource DropReason = "unknown_source"
	// DropMalformed: a datagram (or TUN packet) that is not one whole IPv4 or
	// IPv6 packet.
	DropMalformed DropReason = "malformed"
	// DropSendError: the UDP socket refused to send (e.g. no underlay route).
	DropSendError DropReason = "send_error"
	// DropReceiveError: the UDP socket returned an error other than closing.
	DropReceiveError DropReason = "receive_error"
	// DropTUNReadError: the TUN device returned a packet it could not hand
	// over (e.g. a segmentation request that does not fit a batch).
	DropTUNReadError DropReason = "tun_read_error"
	// DropTUNWriteError: the kernel refused a packet written to the TUN
	// device (e.g. the device is down).
	DropTUNWriteError DropReason = "tun_write_error"
)

// dropReasons lists every reason; a reason's position numbers its counter.
var dropReasons = [...]DropReason{
	DropNoRoute, DropNotRoutable, DropUnknownSource, DropMalformed, DropSendError,
	DropReceiveError, DropTUNReadError, DropTUNWriteError,
}

var (
	packetsMetric = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metrics.Namespace, Subsystem: "udp", Name: "packets_total",
		Help: "Packets moved by the udp backend's datapath: tx = TUN to peer, rx = peer to TUN.",
	}, []string{"direction"})
	bytesMetric = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metrics.Namespace, Subsystem: "udp", Name: "bytes_total",
		Help: "Inner IP bytes moved by the udp backend's datapath: tx = TUN to peer, rx = peer to TUN.",
	}, []string{"direction"})
	dropsMetric = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metrics.Namespace, Subsystem: "udp", Name: "drops_total",
		Help: "Packets the udp backend's datapath discarded, by reason.",
	}, []string{"reason"})

	// Children resolved once so the datapath never hashes label values.
	txPacketsMetric = packetsMetric.WithLabelValues("tx")
	rxPacketsMetric = packetsMetric.WithLabelValues("rx")
	txBytesMetric   = bytesMetric.WithLabelValues("tx")
	rxBytesMetric   = bytesMetric.WithLabelValues("rx")
	dropMetrics     = map[DropReason]prometheus.Counter{}
)

func init() {
	for _, r := range dropReasons {
		dropMetrics[r] = dropsMetric.WithLabelValues(string(r))
	}
	metrics.MustRegister(packetsMetric, bytesMetric, dropsMetric)
}

// Stats are a Tunnel's counters since New. They keep counting across
// re-attachments.
type Stats struct {
	TxPackets, TxBytes uint64 // sent to peers
	RxPackets, RxBytes uint64 // accepted from peers and written to the TUN device
	Drops              map[DropReason]uint64
	// Attached is true while a datapath is running on the device.
	Attached bool
	// Attachments counts datapath starts: the first, and each re-attachment
	// after the device was recreated or the port changed.
	Attachments uint64
	// SkippedPeers is the number of Spec.Peers entries left out of the
	// current table because they were unusable (see the log).
	SkippedPeers int
}

// counters are one Tunnel's numbers; every update also feeds the
// process-wide Prometheus counters.
type counters struct {
	txPackets, txBytes, rxPackets, rxBytes atomic.Uint64
	drops                                  [len(dropReasons)]atomic.Uint64
}

func (c *counters) tx(packets, bytes int) {
	if packets == 0 {
		return
	}
	c.txPackets.Add(uint64(packets))
	c.txBytes.Add(uint64(bytes))
	txPacketsMetric.Add(float64(packets))
	txBytesMetric.Add(float64(bytes))
}

func (c *counters) rx(packets, bytes int) {
	if packets == 0 {
		return
	}
	c.rxPackets.Add(uint64(packets))
	c.rxBytes.Add(uint64(bytes))
	rxPacketsMetric.Add(float64(packets))
	rxBytesMetric.Add(float64(bytes))
}

func (c *counters) drop(r DropReason, packets int) {
	if packets == 0 {
		return
	}
	for i, known := range dropReasons {
		if known == r {
			c.drops[i].Add(uint64(packets))
			break
		}
	}
	dropMetrics[r].Add(float64(packets))
}

func (c *counters) snapshot() Stats {
	s := Stats{
		TxPackets: c.txPackets.Load(), TxBytes: c.txBytes.Load(),
		RxPackets: c.rxPackets.Load(), RxBytes: c.rxBytes.Load(),
		Drops: make(map[DropReason]uint64, len(dropReasons)),
	}
	for i, r := range dropReasons {
		s.Drops[r] = c.drops[i].Load()
	}
	return s
}
