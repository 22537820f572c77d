// Package metrics holds overlayd's Prometheus registry. Each package defines
// the collectors of its own idea and registers them here in an init func;
// the health server exposes the registry on /metrics.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Namespace prefixes every overlayd metric name.
const Namespace = "overlayd"

// Registry is the registry served on /metrics.
var Registry = prometheus.NewRegistry()

func init() {
	Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
}

// MustRegister registers collectors with Registry; call it from init.
func MustRegister(cs ...prometheus.Collector) { Registry.MustRegister(cs...) }
