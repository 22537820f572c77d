package health

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

func TestReadyOnlyWhenEveryConditionHolds(t *testing.T) {
	s := NewStatus(time.Minute, Lease, Datapath, Rules)
	h := Handler(s, prometheus.NewRegistry())
	if code, body := get(t, h, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "[waiting] lease") {
		t.Fatalf("fresh status: %d %q", code, body)
	}
	s.Set(Lease, true, "10.244.1.0/24")
	s.Set(Datapath, true, "")
	if code, body := get(t, h, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "[waiting] rules") || !strings.Contains(body, "[ok] lease: 10.244.1.0/24") {
		t.Fatalf("two of three: %d %q", code, body)
	}
	s.Set(Rules, true, "")
	if code, body := get(t, h, "/readyz"); code != http.StatusOK {
		t.Fatalf("all set: %d %q", code, body)
	}
	s.Set(Datapath, false, "apply failed: network is unreachable")
	if code, body := get(t, h, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "network is unreachable") {
		t.Fatalf("condition lost: %d %q", code, body)
	}
}

func TestAliveFollowsHeartbeat(t *testing.T) {
	now := time.Unix(1000, 0)
	s := NewStatus(30*time.Second, Lease)
	s.now = func() time.Time { return now }
	s.Beat()
	h := Handler(s, nil)
	if code, _ := get(t, h, "/healthz"); code != http.StatusOK {
		t.Fatalf("after beat: %d", code)
	}
	now = now.Add(31 * time.Second)
	if code, body := get(t, h, "/healthz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "silent for 31s") {
		t.Fatalf("stalled: %d %q", code, body)
	}
	if code, _ := get(t, h, "/metrics"); code != http.StatusNotFound {
		t.Fatalf("/metrics without registry: %d", code)
	}
}

func TestMetricsServed(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "overlayd_test_total"})
	reg.MustRegister(c)
	c.Inc()
	code, body := get(t, Handler(NewStatus(time.Minute), reg), "/metrics")
	if code != http.StatusOK || !strings.Contains(body, "overlayd_test_total 1") {
		t.Fatalf("%d %q", code, body)
	}
}

func TestProfilingBesideHealth(t *testing.T) {
	h := Profiling(Handler(NewStatus(time.Minute), nil))
	if code, body := get(t, h, "/debug/pprof/heap?debug=1"); code != http.StatusOK || !strings.Contains(body, "heap profile") {
		t.Fatalf("heap profile: %d %.80q", code, body)
	}
	if code, _ := get(t, h, "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz behind the profiles: %d", code)
	}
	if code, _ := get(t, Handler(NewStatus(time.Minute), nil), "/debug/pprof/heap"); code != http.StatusNotFound {
		t.Fatalf("profiles served without Profiling: %d", code)
	}
}
