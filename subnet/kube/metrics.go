package kube

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/overlayd/overlayd/pkg/metrics"
)

// Skipped peers count into the shared metrics.PeersSkipped; the reasons are
// declared in resolve.go.

var leasesGauge = prometheus.NewGauge(prometheus.GaugeOpts{
	Namespace: metrics.Namespace,
	Name:      "leases",
	Help:      "Peer leases in the current snapshot (the own node excluded).",
})

func init() { metrics.MustRegister(leasesGauge) }
