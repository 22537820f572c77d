package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	harness "github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/lab"
)

// HeapProfile is the agent's heap after a collection, as go tool pprof
// reads it from the agent's /debug/pprof/heap (--profiling).
type HeapProfile struct {
	InuseMiB float64 // live heap
	Top      string  // pprof -top by in-use bytes
}

// heapProfile fetches node n's agent's heap profile (a collection first,
// so that it shows what is live) and has go tool pprof summarise it.
func heapProfile(ctx context.Context, n *lab.Node) (HeapProfile, error) {
	client := harness.HTTPClient(n, 30*time.Second)
	defer client.CloseIdleConnections()
	body, err := getProfile(ctx, client, "/debug/pprof/heap?gc=1")
	if err != nil {
		return HeapProfile{}, fmt.Errorf("fetching the heap profile: %w", err)
	}
	defer body.Close()
	out, err := pprofTop(ctx, body, "", "-sample_index=inuse_space", "-nodecount=12")
	if err != nil {
		return HeapProfile{}, err
	}
	return parseHeapTop(out)
}

// getProfile fetches a profile from the agent's health server and returns
// its body.
func getProfile(ctx context.Context, client *http.Client, path string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", harness.HealthzPort, path), nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("%s (is the agent run with --profiling?)", resp.Status)
	}
	return resp.Body, nil
}

// coldStartProfile is how much of a cold start the CPU profile covers,
// from the moment the agent's health server answers (its first
// milliseconds): longer than a cold start at the peer counts measured.
const coldStartProfile = 4 * time.Second

// cpuProfile waits for node n's agent's health server, takes a CPU profile
// of the next d and returns pprof's top functions by cumulative time. The
// profile itself is kept in the results directory as keep (for go tool
// pprof), when both are set.
func cpuProfile(ctx context.Context, n *lab.Node, d time.Duration, keep string) (string, error) {
	client := harness.HTTPClient(n, d+30*time.Second)
	defer client.CloseIdleConnections()
	path := fmt.Sprintf("/debug/pprof/profile?seconds=%d", int(d.Seconds()))
	deadline := time.Now().Add(30 * time.Second)
	for {
		body, err := getProfile(ctx, client, path)
		var urlErr *url.Error
		if errors.As(err, &urlErr) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond) // not listening yet
			continue
		}
		if err != nil {
			return "", fmt.Errorf("fetching the CPU profile: %w", err)
		}
		defer body.Close()
		out, err := pprofTop(ctx, body, keep, "-cum", "-nodecount=25")
		if err != nil {
			return "", err
		}
		return pprofTable(out)
	}
}

// pprofTop runs go tool pprof -top with args on the profile read from r,
// and keeps the profile in the results directory as keep when both are set.
func pprofTop(ctx context.Context, r io.Reader, keep string, args ...string) (string, error) {
	f, err := os.CreateTemp("", "overlayd-profile-*.pb.gz")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	if dir := os.Getenv(ResultsDirEnv); dir != "" && keep != "" {
		kept, err := os.Create(filepath.Join(dir, keep))
		if err != nil {
			return "", err
		}
		defer kept.Close()
		r = io.TeeReader(r, kept)
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return "", fmt.Errorf("reading the profile: %w", err)
	}
	f.Close()
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	out, err := exec.CommandContext(ctx, goBin, append(append([]string{"tool", "pprof", "-top"}, args...), f.Name())...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go tool pprof: %v\n%s", err, out)
	}
	return string(out), nil
}

// heapTotal is pprof's summary line: "... accounting for 9MB, 80% of 11.5MB total".
var heapTotal = regexp.MustCompile(`of ([0-9.]+)([kMG]?B) total`)

// pprofTable is pprof -top's table, from its summary line on.
func pprofTable(out string) (string, error) {
	i := strings.Index(out, "Showing nodes")
	if i < 0 {
		return "", fmt.Errorf("go tool pprof printed no table:\n%s", out)
	}
	return strings.TrimSpace(out[i:]), nil
}

// parseHeapTop keeps pprof's table and reads the total in-use bytes from it.
func parseHeapTop(out string) (HeapProfile, error) {
	top, err := pprofTable(out)
	if err != nil {
		return HeapProfile{}, err
	}
	m := heapTotal.FindStringSubmatch(top)
	if m == nil {
		return HeapProfile{}, fmt.Errorf("no total in go tool pprof's table:\n%s", top)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return HeapProfile{}, err
	}
	scale := map[string]float64{"B": 1.0 / (1 << 20), "kB": 1.0 / 1024, "MB": 1, "GB": 1024}[m[2]]
	return HeapProfile{InuseMiB: v * scale, Top: top}, nil
}
