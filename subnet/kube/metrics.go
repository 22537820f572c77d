package kube

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/overlayd/overlayd/pkg/metrics"
)

var (
	peersSkipped = metrics.PeersSkipped
	leasesGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: metrics.Namespace,
		Name:      "leases",
		Help:      "Peer leases in the current snapshot (the own node excluded).",
	})
)

func init() {
	metrics.MustRegister(leasesGauge)
	// Show every reason from the start, at zero.
	for _, r := range []string{reasonMissingSubnet, reasonMalformedSubnet, reasonOutsideNetwork, reasonOverlap,
		reasonDuplicate, reasonMissingAnnotations, reasonMalformedAnnotations} {
		peersSkipped.WithLabelValues(r)
	}
}
