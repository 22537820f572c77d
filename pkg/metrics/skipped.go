package metrics

import "github.com/prometheus/client_golang/prometheus"

// PeersSkipped counts peers left out of this node's desired state, once each
// time a peer's reason changes. The lease store skips a Node or Lease it
// cannot take as a peer (no or a conflicting subnet, unusable annotations);
// the loop skips a peer its backend cannot reach. Reasons are snake_case
// words (missing_subnet, not_on_link, ...); each package that decides one
// declares it with NewSkipReason, so that every reason is exported at zero
// from the start.
var PeersSkipped = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: Namespace,
	Name:      "peers_skipped_total",
	Help:      "Peers left out of the desired state, by reason; each change of a peer's reason counts once.",
}, []string{"reason"})

func init() { MustRegister(PeersSkipped) }

// NewSkipReason declares a reason of PeersSkipped and returns it.
func NewSkipReason(reason string) string {
	PeersSkipped.WithLabelValues(reason)
	return reason
}
