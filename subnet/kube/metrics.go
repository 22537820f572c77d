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

// resolves counts how the snapshot was brought up to date: every record
// resolved again ("all"), or only peers that changed what they publish,
// were added or were deleted ("changed").
var resolves = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: metrics.Namespace,
	Name:      "lease_resolves_total",
	Help:      "Lease snapshot updates, by scope: all (every record resolved again) or changed (only peers that changed what they publish, were added or were deleted).",
}, []string{"scope"})

func init() {
	metrics.MustRegister(leasesGauge, resolves)
	resolves.WithLabelValues("all")
	resolves.WithLabelValues("changed")
}
