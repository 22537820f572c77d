package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	harness "github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/lab"
)

// TestHealthReadinessAndMetrics: /healthz answers while the agent runs;
// /readyz says ready only once the datapath is programmed (here it cannot
// be at first: a device that is not overlayd's holds its device name), and
// says why not meanwhile; the failure shows in /metrics and as an Event on
// the Node; /metrics exposes every family an operator needs.
func TestHealthReadinessAndMetrics(t *testing.T) {
	c := newCluster(t, clusterOptions{
		Nodes: 2, NoWait: true,
		BeforeAgents: func(c *cluster, n *lab.Node, _ netip.Prefix) {
			if n == c.node(0) {
				run(t, n, "ip", "link", "add", "overlay.1", "type", "bridge")
			}
		},
	})
	blocked, healthy := c.node(0), c.node(1)
	c.waitReady(healthy)

	harness.Eventually(t, 30*time.Second, "readyz explains what is missing", func() (bool, string) {
		code, body, err := c.health(blocked, "/readyz")
		return err == nil && code == http.StatusServiceUnavailable &&
			containsAll(body, "[waiting] datapath", "link overlay.1 exists and is not overlayd's"), body
	})
	if code, body, err := c.health(blocked, "/healthz"); err != nil || code != http.StatusOK {
		t.Fatalf("/healthz while not ready: %d %q %v", code, body, err)
	}
	harness.Eventually(t, 30*time.Second, "reconcile errors counted", func() (bool, string) {
		return metricValue(t, c, blocked, "overlayd_reconcile_errors_total") > 0, ""
	})
	harness.Eventually(t, 30*time.Second, "an Event on the Node", func() (bool, string) {
		events, err := c.Admin.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{
			FieldSelector: "involvedObject.kind=Node,involvedObject.name=" + blocked.Name + ",reason=DatapathFailed"})
		if err != nil || len(events.Items) == 0 {
			all, _ := c.Admin.CoreV1().Events("").List(context.Background(), metav1.ListOptions{})
			var seen []string
			for _, e := range all.Items {
				seen = append(seen, e.InvolvedObject.Kind+"/"+e.InvolvedObject.Name+" "+e.Reason+": "+e.Message)
			}
			var logged []string
			for _, l := range strings.Split(c.Agents[blocked.Name].Log(), "\n") {
				if strings.Contains(strings.ToLower(l), "event") {
					logged = append(logged, l)
				}
			}
			return false, fmt.Sprintf("no DatapathFailed event (%v); events: %s\nlog: %s", err, strings.Join(seen, "\n"), strings.Join(logged, "\n"))
		}
		return strings.Contains(events.Items[0].Message, "overlay.1"), events.Items[0].Message
	})

	// The operator removes the foreign device: the agent finishes on its
	// own, and when it says ready the datapath is already in place.
	run(t, blocked, "ip", "link", "del", "overlay.1")
	harness.Eventually(t, 30*time.Second, "ready after the fix", func() (bool, string) {
		code, body, err := c.health(blocked, "/readyz")
		return err == nil && code == http.StatusOK, body
	})
	leases := c.leases()
	self := leases[blocked.Name]
	want := strings.Join(wantKernelState(self, leases, func(netip.Addr) bool { return true }, false), "\n")
	if got := strings.Join(kernelState(t, blocked), "\n"); got != want {
		t.Fatalf("ready before the datapath was programmed:\nhave:\n%s\nwant:\n%s", got, want)
	}

	_, metrics, err := c.health(blocked, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, family := range []string{
		"overlayd_leases", "overlayd_peers_skipped_total",
		"overlayd_reconcile_runs_total", "overlayd_reconcile_errors_total", "overlayd_reconcile_duration_seconds",
		"overlayd_kernel_entries", "overlayd_repairs_total", "overlayd_config_reloads_total",
		"overlayd_udp_packets_total", "overlayd_udp_bytes_total", "overlayd_udp_drops_total",
		"overlayd_iptables_repairs_total", "overlayd_iptables_errors_total",
	} {
		if !strings.Contains(metrics, "# TYPE "+family+" ") {
			t.Errorf("/metrics lacks %s", family)
		}
	}
	// One skipped-peer counter for the lease store's reasons and the
	// loop's, every reason exported from the start.
	for _, reason := range []string{"missing_subnet", "overlap", "missing_annotations", "not_on_link", "bad_backend_data", "unknown_backend"} {
		if !strings.Contains(metrics, `overlayd_peers_skipped_total{reason="`+reason+`"} `) {
			t.Errorf("/metrics lacks overlayd_peers_skipped_total{reason=%q}", reason)
		}
	}
	if v := metricValue(t, c, blocked, `overlayd_kernel_entries{kind="route"}`); v != 1 {
		t.Errorf("overlayd_kernel_entries{kind=route} = %v, want 1 (the one peer)", v)
	}
	if v := metricValue(t, c, blocked, "overlayd_leases"); v != 1 {
		t.Errorf("overlayd_leases = %v, want 1", v)
	}
}
