package rules

import (
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
