package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/heap?gc=1", harness.HealthzPort), nil)
	if err != nil {
		return HeapProfile{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return HeapProfile{}, fmt.Errorf("fetching the heap profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return HeapProfile{}, fmt.Errorf("fetching the heap profile: %s (is the agent run with --profiling?)", resp.Status)
	}
	f, err := os.CreateTemp("", "overlayd-heap-*.pb.gz")
	if err != nil {
		return HeapProfile{}, err
	}
	defer os.Remove(f.Name())
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return HeapProfile{}, fmt.Errorf("reading the heap profile: %w", err)
	}
	f.Close()
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	out, err := exec.CommandContext(ctx, goBin, "tool", "pprof", "-top", "-sample_index=inuse_space", "-nodecount=12", f.Name()).CombinedOutput()
	if err != nil {
		return HeapProfile{}, fmt.Errorf("go tool pprof: %v\n%s", err, out)
	}
	return parseHeapTop(string(out))
}

// heapTotal is pprof's summary line: "... accounting for 9MB, 80% of 11.5MB total".
var heapTotal = regexp.MustCompile(`of ([0-9.]+)([kMG]?B) total`)

// parseHeapTop keeps pprof's table (from its summary line on) and reads the
// total in-use bytes from it.
func parseHeapTop(out string) (HeapProfile, error) {
	i := strings.Index(out, "Showing nodes")
	if i < 0 {
		return HeapProfile{}, fmt.Errorf("go tool pprof printed no table:\n%s", out)
	}
	top := strings.TrimSpace(out[i:])
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
