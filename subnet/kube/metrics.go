package kube

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/overlayd/overlayd/pkg/metrics"
)

var (
	peersSkipped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metrics.Namespace,
		Name:      "peers_skipped_total",
		Help:      "Peers left out of the snapshot, counted once each time a peer's problem changes, by reason.",
	}, []string{"reason"})
	leasesGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: metrics.Namespace,
		Name:      "leases",
		Help:      "Peer leases in the current snapshot (the own node excluded).",
	})
)

func init() {
	metrics.MustRegister(peersSkipped, leasesGauge)
	// Show every reason from the start, at zero.
	for _, r := range []string{reasonMissingSubnet, reasonMalformedSubnet, reasonOutsideNetwork, reasonOverlap,
		reasonDuplicate, reasonMissingAnnotations, reasonMalformedAnnotations} {
		peersSkipped.WithLabelValues(r)
	}
}
