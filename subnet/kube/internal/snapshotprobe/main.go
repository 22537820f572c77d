// Command snapshotprobe runs the Kubernetes lease store alone, as the daemon
// would, until its peer snapshot is complete, and prints how long that took
// and the process's memory as one JSON line. subnet/kube's BenchmarkSnapshot
// builds and runs it, so the figures are of a process that holds nothing
// but the lease store.
//
// Environment: OVERLAYD_PROBE_KUBECONFIG, OVERLAYD_PROBE_NODE (this node's
// name), OVERLAYD_PROBE_PEERS (how many peers make the snapshot complete),
// OVERLAYD_PROBE_NETCONF (net-conf.json); optional OVERLAYD_PROBE_CPUPROFILE
// and OVERLAYD_PROBE_HEAPPROFILE (file paths).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/reconcile"
	"github.com/overlayd/overlayd/subnet/kube"
)

// Result is the probe's output.
type Result struct {
	Peers      int     `json:"peers"`
	SnapshotMs float64 `json:"snapshotMs"` // from start (client config included) to the complete snapshot
	// Memory at the complete snapshot, from /proc/self/status, in KiB:
	// VmRSS = RssAnon (heap, stacks) + RssFile (pages of the executable).
	VmRSS, VmHWM, RssAnon, RssFile int64
	StartVmRSS                     int64  // before the lease store starts: runtime and package init
	HeapLiveKiB                    uint64 // Go heap reachable after a collection, taken after the figures above
	Error                          string `json:"error,omitempty"`
}

func main() {
	reconcile.TuneGC() // as the daemon runs
	r, err := probe()
	if err != nil {
		r.Error = err.Error()
	}
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
	if err != nil {
		os.Exit(1)
	}
}

func probe() (r Result, err error) {
	r.StartVmRSS = status("VmRSS")
	peers, err := strconv.Atoi(os.Getenv("OVERLAYD_PROBE_PEERS"))
	if err != nil {
		return r, fmt.Errorf("OVERLAYD_PROBE_PEERS: %w", err)
	}
	net, err := netconf.Parse([]byte(os.Getenv("OVERLAYD_PROBE_NETCONF")))
	if err != nil {
		return r, err
	}
	if path := os.Getenv("OVERLAYD_PROBE_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return r, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return r, err
		}
		defer pprof.StopCPUProfile()
	}

	start := time.Now()
	cfg, err := kube.NewClientConfig(os.Getenv("OVERLAYD_PROBE_KUBECONFIG"), "")
	if err != nil {
		return r, err
	}
	client, err := kube.NewClient(cfg)
	if err != nil {
		return r, err
	}
	m, err := kube.New(kube.Config{Client: client, NodeName: os.Getenv("OVERLAYD_PROBE_NODE"), Net: net})
	if err != nil {
		return r, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- m.Run(ctx) }()
	for {
		got, synced := m.Peers()
		if synced && len(got) == peers {
			r.Peers = len(got)
			break
		}
		select {
		case <-m.Changed():
		case err := <-runErr:
			return r, fmt.Errorf("Run: %v", err)
		case <-ctx.Done():
			return r, errors.New("no complete snapshot within 5 minutes")
		}
	}
	r.SnapshotMs = float64(time.Since(start).Microseconds()) / 1000
	r.VmRSS, r.VmHWM, r.RssAnon, r.RssFile = status("VmRSS"), status("VmHWM"), status("RssAnon"), status("RssFile")

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	r.HeapLiveKiB = ms.HeapAlloc / 1024
	if path := os.Getenv("OVERLAYD_PROBE_HEAPPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return r, err
		}
		defer f.Close()
		return r, pprof.WriteHeapProfile(f)
	}
	return r, nil
}

// status reads a "kB" field of /proc/self/status.
func status(field string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		name, rest, ok := strings.Cut(s.Text(), ":")
		if ok && name == field {
			v, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return v
		}
	}
	return -1
}
