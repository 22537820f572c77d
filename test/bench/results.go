// Package bench holds overlayd's cluster benchmarks, run by `make bench`
// (hack/bench). They print figures and never fail on a time; they fail only
// when something does not work (an agent that never converges, a pod that
// cannot reach another).
//
//   - BenchmarkThroughput: pod-to-pod TCP throughput (iperf3, one stream)
//     between two lab nodes for vxlan, host-gw, udp and wireguard, each a real overlayd
//     binary on real namespace nodes with pods attached by the real CNI
//     plugins; backends alternate within every round (-benchtime Nx: N
//     rounds).
//   - BenchmarkConvergence: one real overlayd agent against a real API
//     server holding 1000 and 5000 peer Nodes, in an IPv4-only cluster and
//     then in a dual-stack one: time from start until every route,
//     neighbour and FDB entry is in the kernel, time for one new or
//     deleted peer to reach the kernel (-benchtime Nx: N samples), memory,
//     and the cost of a reconcile that changes nothing.
//   - BenchmarkAPIServerCost: the watch events and bytes the API server
//     sends one agent for a Node status update, podCIDR mode against Lease
//     mode, from the API server's own metrics.
//   - BenchmarkPassAfterOneChange: the agent's CPU for one changed peer at
//     1000, 5000 and 10 000 peers.
//   - BenchmarkBesideFlanneld: the real flanneld and overlayd, one after
//     the other, as the agent of one node at 1000, 5000 and 10 000 peers:
//     cold start, memory, CPU, and 100 Nodes added and deleted at once.
//
// Run by hand (root, `make build test-bins cni-bins` first):
//
//	OVERLAYD_BIN=$PWD/bin/overlayd go test -run '^$' -bench Throughput -benchtime 3x -timeout 20m ./test/bench/
//
// Network namespaces are named ovlH-<id>-*; everything is removed on exit.
// With OVERLAYD_BENCH_RESULTS set to a directory, each benchmark also writes
// its raw figures there as JSON, for the summary table.
package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// ResultsDirEnv names the directory the benchmarks write their figures to.
const ResultsDirEnv = "OVERLAYD_BENCH_RESULTS"

// Result file names in the results directory.
const (
	ThroughputFile  = "throughput.json"
	ConvergenceFile = "convergence.json"
)

// Throughput is what BenchmarkThroughput measured.
type Throughput struct {
	Seconds  int // length of one iperf3 run, after a 1 s warm-up it omits
	Rounds   int
	Backends []BackendThroughput // vxlan first: the reference
}

// BackendThroughput is one backend's runs, in round order.
type BackendThroughput struct {
	Backend     string
	MTU         int       // FLANNEL_MTU written by overlayd, checked against the pods' eth0
	Gbps        []float64 // received throughput per round
	Retransmits []int     // TCP retransmits per round
	AgentCPU    []float64 // CPU seconds both agents used per run (the udp datapath's cost)
}

// Convergence is what BenchmarkConvergence measured, per family and peer
// count.
type Convergence struct {
	Sizes []ConvergenceSize // IPv4 ones first, each family's by peer count
}

// The families of BenchmarkConvergence.
const (
	FamilyIPv4 = "ipv4" // an IPv4-only cluster
	FamilyDual = "dual" // a dual-stack cluster: every peer has both families
)

// ConvergenceSize holds the figures for one family and number of peers.
type ConvergenceSize struct {
	Family          string // FamilyIPv4 or FamilyDual
	Peers           int
	EntriesPerPeer  int         // kernel entries one peer calls for: 3 (IPv4), 6 (dual-stack)
	LoadAverage     string      // the machine's 1-minute load average as the first cold start began
	CreateSeconds   float64     // creating the (missing) peer Nodes in the API, setup only
	FirstEntrySec   float64     // agent start to the first overlayd route in the kernel (median)
	ConvergedSec    float64     // agent start to every route, neighbour and FDB entry (median)
	ColdStartsSec   []float64   // each cold start's ConvergedSec
	ColdStartCPUSec float64     // agent CPU seconds from start to every entry (median)
	WarmRestartSec  float64     // restart with everything in place, to /readyz
	WarmRestartDiff int         // kernel entries the warm restart changed (want 0)
	AddMs           []float64   // Node created -> its route, neighbour and FDB entry (of each family) in the kernel
	DeleteMs        []float64   // Node deleted -> all of them gone
	ReadyRSSKiB     int64       // when /readyz first answers after the last cold start
	VmRSSKiB        int64       // steady state, after the no-change window
	VmHWMKiB        int64       // peak since the agent's start (the last cold start)
	RssAnonKiB      int64       // VmRSSKiB's anonymous part (heap, stacks)
	RssFileKiB      int64       // VmRSSKiB's file-backed part (the binary's pages)
	NoopReconcileMs float64     // mean overlayd_reconcile_duration_seconds over no-change passes
	NoopReconciles  int         // passes that mean is over
	IdleCPUPercent  float64     // agent CPU over the no-change window
	Heap            HeapProfile // after the no-change window
	ColdStartCPUTop string      // pprof -top of the last cold start's first coldStartProfile
}

// WriteResult stores v as name in the results directory, if one is set.
func WriteResult(name string, v any) error {
	dir := os.Getenv(ResultsDirEnv)
	if dir == "" {
		return nil
	}
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding %s: %w", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
		return fmt.Errorf("writing result %s: %w", name, err)
	}
	return nil
}

// ReadResult loads name from dir into v.
func ReadResult(dir, name string, v any) error {
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decoding %s: %w", name, err)
	}
	return nil
}

// Median of xs (0 for none); xs is not changed.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Spread is the smallest and largest of xs.
func Spread(xs []float64) (lo, hi float64) {
	if len(xs) == 0 {
		return 0, 0
	}
	return slices.Min(xs), slices.Max(xs)
}
