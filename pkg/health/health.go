// Package health serves /healthz (liveness), /readyz (readiness) and
// /metrics. Readiness is a set of named conditions the daemon sets as its
// parts come up: the lease, the datapath, the traffic rules.
package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/overlayd/overlayd/pkg/reuseport"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Conditions that make the node ready.
const (
	Lease    = "lease"
	Datapath = "datapath"
	Rules    = "rules"
)

// Status is the daemon's health as the endpoints report it.
type Status struct {
	mu         sync.Mutex
	required   []string
	conditions map[string]condition
	heartbeat  time.Time
	stallAfter time.Duration
	now        func() time.Time
}

type condition struct {
	ok     bool
	detail string
}

// NewStatus returns a status that is ready once every required condition is
// set, and alive as long as Beat is called at least every stallAfter.
func NewStatus(stallAfter time.Duration, required ...string) *Status {
	return &Status{
		required:   required,
		conditions: map[string]condition{},
		stallAfter: stallAfter,
		heartbeat:  time.Now(),
		now:        time.Now,
	}
}

// Set records whether condition name holds, with a detail for operators.
func (s *Status) Set(name string, ok bool, detail string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conditions[name] = condition{ok: ok, detail: detail}
}

// Beat tells the status that the daemon loop is alive.
func (s *Status) Beat() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.heartbeat = s.now()
}

// Ready reports readiness and a line per condition.
func (s *Status) Ready() (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ready := true
	var b strings.Builder
	names := append([]string(nil), s.required...)
	sort.Strings(names)
	for _, name := range names {
		c, ok := s.conditions[name]
		state := "ok"
		if !ok || !c.ok {
			ready = false
			state = "waiting"
		}
		fmt.Fprintf(&b, "[%s] %s", state, name)
		if c.detail != "" {
			fmt.Fprintf(&b, ": %s", c.detail)
		}
		b.WriteByte('\n')
	}
	return ready, b.String()
}

// Alive reports whether the daemon loop has beaten recently.
func (s *Status) Alive() (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	since := s.now().Sub(s.heartbeat)
	if since > s.stallAfter {
		return false, fmt.Sprintf("daemon loop silent for %s (limit %s)\n", since.Round(time.Second), s.stallAfter)
	}
	return true, "ok\n"
}

// Handler serves /healthz, /readyz and, when reg is not nil, /metrics.
func Handler(s *Status, reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		write(w, s.Alive)
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		write(w, s.Ready)
	})
	if reg != nil {
		mux.Handle("/metrics", MetricsHandler(reg))
	}
	return mux
}

// MetricsHandler serves the registry in the Prometheus exposition format.
func MetricsHandler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}

func write(w http.ResponseWriter, check func() (bool, string)) {
	ok, body := check()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprint(w, body)
}

// Serve serves h on addr until ctx ends. The listener is opened before
// Serve returns, so a bad address is an error at start-up. It shares the
// port (SO_REUSEPORT) with another agent of this node: during a surge
// upgrade the new agent starts while the old one still listens, and a
// busy port must not keep it from starting.
func Serve(ctx context.Context, addr string, h http.Handler, log *zap.Logger) error {
	lc := net.ListenConfig{Control: reuseport.Control}
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("health server stopped", zap.String("addr", addr), zap.Error(err))
		}
	}()
	return nil
}
