package rules

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/overlayd/overlayd/pkg/metrics"
)

var (
	repairsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metrics.Namespace,
		Subsystem: "iptables",
		Name:      "repairs_total",
		Help:      "Times one of overlayd's chains or jump rules had drifted from what overlayd last verified (deleted, flushed or edited by someone else) and was restored.",
	}, []string{"family", "table", "chain"})
	errorsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metrics.Namespace,
		Subsystem: "iptables",
		Name:      "errors_total",
		Help:      "Failed attempts to read or write overlayd's iptables rules.",
	}, []string{"family", "table"})
)

var (
	nftRepairs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metrics.Namespace,
		Subsystem: "nftables",
		Name:      "repairs_total",
		Help:      "Times a chain of overlayd's nftables table had drifted from what overlayd last verified and was restored.",
	}, []string{"chain"})
	nftErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: metrics.Namespace,
		Subsystem: "nftables",
		Name:      "errors_total",
		Help:      "Failed attempts to read or write overlayd's nftables table.",
	})
)

func init() {
	metrics.MustRegister(repairsTotal, errorsTotal, nftRepairs, nftErrors)
	nftRepairs.WithLabelValues(NFTMasqChain)
	nftRepairs.WithLabelValues(NFTForwardChain)
	// Exported at zero from the start, so that dashboards and alerts see
	// them before the first repair or error.
	for _, family := range []string{"ipv4", "ipv6"} {
		repairsTotal.WithLabelValues(family, "nat", MasqChain)
		repairsTotal.WithLabelValues(family, "filter", ForwardChain)
		errorsTotal.WithLabelValues(family, "nat")
		errorsTotal.WithLabelValues(family, "filter")
	}
}

// ingressDropped counts encapsulated packets from hosts that are not peers,
// dropped by the ingress filter, by family ("ipv4", "ipv6", "nftables").
// The kernel keeps the count on the drop rule; a rewritten rule starts again
// from zero, so what is added is what grew since the last read.
var ingressDropped = &kernelCounter{c: prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: metrics.Namespace,
	Name:      "ingress_dropped_packets_total",
	Help:      "Encapsulated packets (to a tunnel's UDP port) from hosts that are not peers, dropped.",
}, []string{"family"}), last: map[string]uint64{}}

type kernelCounter struct {
	c    *prometheus.CounterVec
	mu   sync.Mutex
	last map[string]uint64
}

func (k *kernelCounter) observe(label string, v uint64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	d := v
	if last := k.last[label]; v >= last {
		d = v - last
	}
	k.last[label] = v
	k.c.WithLabelValues(label).Add(float64(d))
}

// ingressCollector reads the kernel's drop counters at each scrape (through
// the process's Modes), so that the metric is current rather than as old as
// the last rules check.
type ingressCollector struct{}

// scraped is the Modes whose counters a scrape reads: the process has one.
var scraped atomic.Pointer[Modes]

func (ingressCollector) Describe(ch chan<- *prometheus.Desc) { ingressDropped.c.Describe(ch) }

func (ingressCollector) Collect(ch chan<- prometheus.Metric) {
	if m := scraped.Load(); m != nil {
		m.readDrops()
	}
	ingressDropped.c.Collect(ch)
}

func init() {
	metrics.MustRegister(ingressCollector{})
	for _, f := range []string{"ipv4", "ipv6", "nftables"} {
		ingressDropped.c.WithLabelValues(f)
	}
}
