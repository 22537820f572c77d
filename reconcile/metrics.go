package reconcile

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/pkg/metrics"
)

var (
	reconcileRuns = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: metrics.Namespace, Name: "reconcile_runs_total",
		Help: "Reconcile passes: desired state computed and applied.",
	})
	changedPeerRuns = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: metrics.Namespace, Name: "reconcile_changed_peer_runs_total",
		Help: "Reconcile passes after lease changes alone that applied only the changed peers' entries (also counted in reconcile_runs_total).",
	})
	reconcileErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: metrics.Namespace, Name: "reconcile_errors_total",
		Help: "Reconcile passes that failed and were retried.",
	})
	reconcileDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: metrics.Namespace, Name: "reconcile_duration_seconds",
		Help:    "Time of one reconcile pass.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	})
	kernelEntries = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: metrics.Namespace, Name: "kernel_entries",
		Help: "Kernel entries overlayd maintains, by kind (link, route, neigh, fdb).",
	}, []string{"kind"})
	repairs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metrics.Namespace, Name: "repairs_total",
		Help: "Kernel entries restored or corrected although the desired state had not changed (deleted or altered by someone else).",
	}, []string{"kind"})
)

func init() {
	metrics.MustRegister(reconcileRuns, changedPeerRuns, reconcileErrors, reconcileDuration, kernelEntries, repairs)
	// Exported at zero from the start, so that dashboards and alerts see
	// them before the first occurrence.
	for _, kind := range []string{kernel.EntryLink, kernel.EntryAddr, kernel.EntryRoute, kernel.EntryNeigh, kernel.EntryFDB} {
		repairs.WithLabelValues(kind)
	}
}

var configReloads = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: metrics.Namespace, Name: "config_reloads_total",
	Help: "Changed net-conf.json contents seen, by result: applied, unchanged, invalid, refused (cannot change live).",
}, []string{"result"})

func init() {
	metrics.MustRegister(configReloads)
	for _, result := range []string{"applied", "unchanged", "invalid", "refused"} {
		configReloads.WithLabelValues(result)
	}
}
