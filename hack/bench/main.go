// Command bench is `make bench`: it runs overlayd's benchmarks one after
// the other (never two at once: they would measure each other), streams
// their output, and ends with one summary table. It fails only when a
// benchmark fails to run, never on a figure.
//
//   - throughput: test/bench BenchmarkThroughput (vxlan, host-gw, udp, wireguard);
//   - convergence: test/bench BenchmarkConvergence (1000 and 5000 peers, an
//     IPv4-only cluster, then a dual-stack one, compared side by side);
//   - snapshot: subnet/kube BenchmarkSnapshot (the lease store at 5000 nodes);
//   - apiserver: test/bench BenchmarkAPIServerCost (what a Node update costs
//     the API server per agent, podCIDR mode against Lease mode);
//   - passcost: test/bench BenchmarkPassAfterOneChange (the agent's CPU for
//     one changed peer at 1000, 5000 and 10 000 peers).
//
// Run from the repository root, as root, after `make build test-bins
// cni-bins`.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/overlayd/overlayd/test/bench"
	"github.com/overlayd/overlayd/test/lab"
)

// labPrefix is test/bench's namespace prefix, swept after each run in case
// a benchmark process died without cleaning up.
const labPrefix = "ovlH"

type options struct {
	overlayd      string
	only          string
	rounds        int
	iperfSeconds  int
	churn         int
	peers         string
	families      string
	coldStarts    int
	snapshotRuns  int
	flanneldPeers string
}

func main() {
	var o options
	flag.StringVar(&o.overlayd, "overlayd", "bin/overlayd", "overlayd binary the cluster benchmarks run")
	flag.StringVar(&o.only, "only", "throughput,convergence,snapshot,apiserver,passcost,flanneld", "benchmarks to run, comma-separated")
	flag.IntVar(&o.rounds, "rounds", 5, "throughput rounds; each runs every backend once")
	flag.IntVar(&o.iperfSeconds, "iperf-seconds", 10, "length of one iperf3 run")
	flag.IntVar(&o.churn, "churn", 5, "peers added and deleted one at a time, per peer count")
	flag.StringVar(&o.peers, "peers", "1000,5000", "peer counts of the convergence benchmark")
	flag.StringVar(&o.families, "families", bench.FamilyIPv4+","+bench.FamilyDual, "clusters of the convergence benchmark: ipv4 (IPv4-only), dual (dual-stack), or both to compare them")
	flag.IntVar(&o.coldStarts, "cold-starts", 3, "cold starts per peer count and family of the convergence benchmark (the median is shown)")
	flag.StringVar(&o.flanneldPeers, "flanneld-peers", "1000,5000,10000", "peer counts of the benchmark beside the real flanneld")
	flag.IntVar(&o.snapshotRuns, "snapshot-runs", 3, "runs of the lease store snapshot probe")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	if _, err := os.Stat("go.mod"); err != nil {
		return errors.New("run from the repository root (make bench)")
	}
	abs, err := absPath(o.overlayd)
	if err != nil {
		return fmt.Errorf("-overlayd: %w", err)
	}
	resultsDir, err := os.MkdirTemp("", "overlayd-bench-results-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(resultsDir)

	// An interrupt reaches the benchmark processes too; they clean up and
	// exit, and this process waits for them instead of dying first.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	env := append(os.Environ(), "OVERLAYD_BIN="+abs, bench.ResultsDirEnv+"="+resultsDir)
	s := summary{start: time.Now(), load: loadAverage()}
	var errs []error
	for _, name := range strings.Split(o.only, ",") {
		if ctx.Err() != nil {
			errs = append(errs, errors.New("interrupted"))
			break
		}
		var args []string
		switch strings.TrimSpace(name) {
		case "throughput":
			args = []string{"./test/bench/", "-bench", "^BenchmarkThroughput$", "-benchtime", fmt.Sprintf("%dx", o.rounds)}
			env = append(env, "OVERLAYD_BENCH_IPERF_SECONDS="+strconv.Itoa(o.iperfSeconds))
		case "convergence":
			args = []string{"./test/bench/", "-bench", "^BenchmarkConvergence$", "-benchtime", fmt.Sprintf("%dx", o.churn)}
			env = append(env, "OVERLAYD_BENCH_PEERS="+o.peers, "OVERLAYD_BENCH_FAMILIES="+o.families,
				"OVERLAYD_BENCH_COLD_STARTS="+strconv.Itoa(o.coldStarts))
		case "snapshot":
			args = []string{"./subnet/kube/", "-bench", "^BenchmarkSnapshot$", "-benchtime", fmt.Sprintf("%dx", o.snapshotRuns)}
		case "apiserver":
			args = []string{"./test/bench/", "-bench", "^BenchmarkAPIServerCost$", "-benchtime", "1x"}
		case "passcost":
			args = []string{"./test/bench/", "-bench", "^BenchmarkPassAfterOneChange$", "-benchtime", fmt.Sprintf("%dx", o.churn*2)}
		case "flanneld":
			args = []string{"./test/bench/", "-bench", "^BenchmarkBesideFlanneld$", "-benchtime", "1x"}
			env = append(env, "OVERLAYD_BENCH_FLANNELD_PEERS="+o.flanneldPeers)
		default:
			return fmt.Errorf("-only: unknown benchmark %q", name)
		}
		out, err := goTest(env, args...)
		if removed, serr := lab.Sweep(labPrefix); serr == nil && len(removed) > 0 {
			fmt.Printf("bench: removed namespaces a benchmark left behind: %s\n", strings.Join(removed, " "))
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
		switch strings.TrimSpace(name) {
		case "throughput":
			s.throughput = &bench.Throughput{}
			if rerr := bench.ReadResult(resultsDir, bench.ThroughputFile, s.throughput); rerr != nil {
				s.throughput = nil
			}
		case "convergence":
			s.convergence = &bench.Convergence{}
			if rerr := bench.ReadResult(resultsDir, bench.ConvergenceFile, s.convergence); rerr != nil {
				s.convergence = nil
			}
		case "snapshot":
			s.snapshot = parseSnapshot(out)
		case "passcost":
			s.passCost = &bench.PassCost{}
			if rerr := bench.ReadResult(resultsDir, bench.PassCostFile, s.passCost); rerr != nil {
				s.passCost = nil
			}
		case "flanneld":
			s.besideFlanneld = &bench.BesideFlanneld{}
			if rerr := bench.ReadResult(resultsDir, bench.BesideFlanneldFile, s.besideFlanneld); rerr != nil {
				s.besideFlanneld = nil
			}
		case "apiserver":
			s.apiserver = &bench.APIServerCost{}
			if rerr := bench.ReadResult(resultsDir, bench.APIServerCostFile, s.apiserver); rerr != nil {
				s.apiserver = nil
			}
		}
	}
	s.print(os.Stdout)
	return errors.Join(errs...)
}

// goTest runs one benchmark package, streaming its output, and returns it.
func goTest(env []string, args ...string) ([]byte, error) {
	argv := append([]string{"test", "-run", "^$", "-count", "1", "-timeout", "30m"}, args...)
	fmt.Printf("\n=== go %s\n", strings.Join(argv, " "))
	cmd := exec.Command(goBinary(), argv...)
	cmd.Env = env
	var buf bytes.Buffer
	cmd.Stdout = io.MultiWriter(os.Stdout, &buf)
	cmd.Stderr = io.MultiWriter(os.Stderr, &buf)
	err := cmd.Run()
	return buf.Bytes(), err
}

func goBinary() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return runtime.GOROOT() + "/bin/go"
}

func absPath(p string) (string, error) {
	if _, err := os.Stat(p); err != nil {
		return "", err
	}
	if strings.HasPrefix(p, "/") {
		return p, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	return wd + "/" + p, nil
}

func loadAverage() string {
	data, _ := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(data)); len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
}

// snapshot is what subnet/kube's BenchmarkSnapshot printed.
type snapshot struct {
	nodes      int
	meanMs     float64   // ms/snapshot: mean over the runs
	runsMs     []float64 // each run's time to a complete snapshot
	rssMiB     float64   // largest VmRSS after the snapshot
	peakRSSMiB float64   // largest VmHWM
}

var snapshotRunRE = regexp.MustCompile(`complete snapshot of \d+ peers in ([\d.]+) ms`)

// parseSnapshot reads the benchmark line's metrics and each run's log line.
func parseSnapshot(out []byte) *snapshot {
	var s snapshot
	found := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if m := snapshotRunRE.FindStringSubmatch(line); m != nil {
			v, _ := strconv.ParseFloat(m[1], 64)
			s.runsMs = append(s.runsMs, v)
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "BenchmarkSnapshot") {
			continue
		}
		found = true
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "ms/snapshot":
				s.meanMs = v
			case "MiB-RSS":
				s.rssMiB = v
			case "MiB-peakRSS":
				s.peakRSSMiB = v
			case "nodes":
				s.nodes = int(v)
			}
		}
	}
	if !found {
		return nil
	}
	return &s
}

type summary struct {
	start          time.Time
	load           string
	throughput     *bench.Throughput
	convergence    *bench.Convergence
	snapshot       *snapshot
	apiserver      *bench.APIServerCost
	passCost       *bench.PassCost
	besideFlanneld *bench.BesideFlanneld
}

func (s *summary) print(out io.Writer) {
	fmt.Fprintf(out, "\n==================== overlayd benchmark summary ====================\n")
	fmt.Fprintf(out, "%d CPUs, load average %s at start, %s in all\n", runtime.NumCPU(), s.load, time.Since(s.start).Round(time.Second))
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	if t := s.throughput; t != nil && len(t.Backends) > 0 {
		fmt.Fprintf(out, "\nThroughput, pod to pod across two nodes: iperf3, one TCP stream, %d rounds x %d s, backends alternating;\n", t.Rounds, t.Seconds)
		fmt.Fprintf(out, "real overlayd on both nodes, pods attached by the CNI plugins with overlayd's MTU\n")
		fmt.Fprintln(w, "  backend\tMTU\tmedian Gbit/s\tmin - max\tvs vxlan (median)\tper-round ratios\tagents' CPU s/run\tretransmits/run")
		ref := t.Backends[0]
		refMed := bench.Median(ref.Gbps)
		for _, b := range t.Backends {
			med := bench.Median(b.Gbps)
			lo, hi := bench.Spread(b.Gbps)
			var ratios []string
			for i := range b.Gbps {
				if i < len(ref.Gbps) && ref.Gbps[i] > 0 {
					ratios = append(ratios, fmt.Sprintf("%.0f%%", 100*b.Gbps[i]/ref.Gbps[i]))
				}
			}
			vs := fmt.Sprintf("%.1f%%", 100*med/refMed)
			switch b.Backend {
			case "udp":
				vs += target(100*med/refMed >= 25, "target >= 25%")
			case "wireguard":
				vs += target(100*med/refMed >= 30, "target >= 30%")
			}
			retr := make([]float64, len(b.Retransmits))
			for i, r := range b.Retransmits {
				retr[i] = float64(r)
			}
			fmt.Fprintf(w, "  %s\t%d\t%.2f\t%.2f - %.2f\t%s\t%s\t%.1f\t%.0f\n", b.Backend, b.MTU, med, lo, hi, vs,
				strings.Join(ratios, " "), bench.Median(b.AgentCPU), bench.Median(retr))
		}
		w.Flush()
	} else {
		fmt.Fprintln(out, "\nThroughput: not measured")
	}

	if sn := s.snapshot; sn != nil {
		fmt.Fprintf(out, "\nLease store at scale (subnet/kube BenchmarkSnapshot): %d nodes, %d runs of a probe running only the lease store\n", sn.nodes, len(sn.runsMs))
		lo, hi := bench.Spread(sn.runsMs)
		fmt.Fprintf(w, "  start to full snapshot\t%.0f ms mean (runs %.0f - %.0f ms)\t%s\n", sn.meanMs, lo, hi, target(sn.meanMs <= 1000, "target <= 1 s"))
		fmt.Fprintf(w, "  RSS with the snapshot\t%.1f MiB (peak %.1f MiB)\t%s\n", sn.rssMiB, sn.peakRSSMiB, target(sn.peakRSSMiB <= 40, "target <= 40 MiB"))
		w.Flush()
	} else {
		fmt.Fprintln(out, "\nLease store at scale: not measured")
	}

	if a := s.apiserver; a != nil && len(a.Modes) > 0 {
		fmt.Fprintf(out, "\nAPI server cost of a Node status update (a kubelet heartbeat), per agent, from the API server's\n")
		fmt.Fprintf(out, "apiserver_watch_events_total and apiserver_watch_events_sizes (kubelet-size Nodes, protobuf)\n")
		for _, m := range a.Modes {
			lease := ""
			if m.LeaseEventBytes > 0 {
				lease = fmt.Sprintf("; a Lease event: %.0f bytes", m.LeaseEventBytes)
			}
			fmt.Fprintf(w, "  %s mode\t%.2f events, %.0f bytes per update per agent\t(%d updates, %d peers%s)\n",
				m.Mode, m.EventsPerUpdate, m.BytesPerUpdate, m.Updates, m.Peers, lease)
		}
		w.Flush()
	} else {
		fmt.Fprintln(out, "\nAPI server cost of a Node update: not measured")
	}

	if p := s.passCost; p != nil && len(p.Sizes) > 0 {
		fmt.Fprintf(out, "\nOne changed peer (its public IP moved): the agent's CPU until the passes it brought ended\n")
		for _, z := range p.Sizes {
			lo, hi := bench.Spread(z.CPUMs)
			fmt.Fprintf(w, "  N = %d\t%.0f ms CPU (%.0f - %.0f, n=%d)\t%.0f passes, %.0f ms\n", z.Peers, bench.Median(z.CPUMs), lo, hi, len(z.CPUMs),
				bench.Median(z.Passes), bench.Median(z.PassMs))
		}
		first, last := p.Sizes[0], p.Sizes[len(p.Sizes)-1]
		growth := bench.Median(last.CPUMs) / bench.Median(first.CPUMs)
		fmt.Fprintf(w, "  N = %d against N = %d\t%.1fx\t%s\n", last.Peers, first.Peers, growth, target(growth <= 1.5, "target: flat"))
		w.Flush()
	} else {
		fmt.Fprintln(out, "\nOne changed peer: not measured")
	}

	printBesideFlanneld(out, s.besideFlanneld)

	if c := s.convergence; c != nil && len(c.Sizes) > 0 {
		fmt.Fprintf(out, "\nConvergence: one real overlayd agent (vxlan), N peer Nodes of kubelet size in a real API server;\n")
		fmt.Fprintf(out, "dual-stack: a cluster of its own, the agent and every peer with an IPv4 and an IPv6 podCIDR and public address\n")
		row := func(label string, cell func(bench.ConvergenceSize) string) {
			fmt.Fprintf(w, "  %s", label)
			for _, z := range c.Sizes {
				fmt.Fprintf(w, "\t%s", cell(z))
			}
			fmt.Fprintln(w)
		}
		row("", func(z bench.ConvergenceSize) string { return fmt.Sprintf("N = %d%s", z.Peers, familySuffix(z)) })
		row("cold start to first route (median)", func(z bench.ConvergenceSize) string { return fmt.Sprintf("%.2f s", z.FirstEntrySec) })
		row("cold start to all routes, neighbours, FDB entries", func(z bench.ConvergenceSize) string {
			lo, hi := bench.Spread(z.ColdStartsSec)
			return fmt.Sprintf("%.2f s (%.2f - %.2f, n=%d; %d entries)", z.ConvergedSec, lo, hi, len(z.ColdStartsSec), z.Peers*entriesPerPeer(z))
		})
		row("agent CPU from start to all entries (median)", func(z bench.ConvergenceSize) string { return fmt.Sprintf("%.2f s", z.ColdStartCPUSec) })
		row("new peer Node to its entries (3, dual-stack 6)", func(z bench.ConvergenceSize) string { return medianRange(z.AddMs) })
		row("deleted peer Node to its entries gone", func(z bench.ConvergenceSize) string { return medianRange(z.DeleteMs) })
		row("no-change reconcile (mean)", func(z bench.ConvergenceSize) string {
			return fmt.Sprintf("%.1f ms (%d passes)", z.NoopReconcileMs, z.NoopReconciles)
		})
		row("agent VmRSS / VmHWM", func(z bench.ConvergenceSize) string {
			return fmt.Sprintf("%.1f / %.1f MiB", float64(z.VmRSSKiB)/1024, float64(z.VmHWMKiB)/1024)
		})
		row("agent VmRSS: anonymous + file-backed (binary)", func(z bench.ConvergenceSize) string {
			return fmt.Sprintf("%.1f + %.1f MiB", float64(z.RssAnonKiB)/1024, float64(z.RssFileKiB)/1024)
		})
		row("agent VmRSS at ready, after the cold start", func(z bench.ConvergenceSize) string { return fmt.Sprintf("%.1f MiB", float64(z.ReadyRSSKiB)/1024) })
		row("agent heap in use (after a collection)", func(z bench.ConvergenceSize) string { return fmt.Sprintf("%.1f MiB", z.Heap.InuseMiB) })
		row("agent CPU when idle (resync every 2 s)", func(z bench.ConvergenceSize) string { return fmt.Sprintf("%.1f%%", z.IdleCPUPercent) })
		row("warm restart to ready (kernel writes)", func(z bench.ConvergenceSize) string {
			return fmt.Sprintf("%.2f s (%d)", z.WarmRestartSec, z.WarmRestartDiff)
		})
		row("setup: creating the peer Nodes", func(z bench.ConvergenceSize) string { return fmt.Sprintf("%.1f s", z.CreateSeconds) })
		row("load average (1 min) at the cold start", func(z bench.ConvergenceSize) string { return orUnknown(z.LoadAverage) })
		w.Flush()
		for _, z := range c.Sizes {
			if z.ColdStartCPUTop != "" {
				fmt.Fprintf(out, "\nCPU profile of the last cold start, N = %d%s (go tool pprof -top -cum):\n%s\n", z.Peers, familySuffix(z), z.ColdStartCPUTop)
			}
			if z.Heap.Top != "" {
				fmt.Fprintf(out, "\nHeap profile, N = %d%s (go tool pprof -top -sample_index=inuse_space):\n%s\n", z.Peers, familySuffix(z), z.Heap.Top)
			}
		}
		printDualStack(out, c)
	} else {
		fmt.Fprintln(out, "\nConvergence: not measured")
	}
	fmt.Fprintln(out)
}

// dualStackTarget is the bound on what dual-stack may cost over
// IPv4-only at the same peer count, for the cold start and for RSS.
const dualStackTarget = 1.5

// printDualStack sets each dual-stack figure beside the IPv4-only one of
// the same run and peer count, with the ratio.
func printDualStack(out io.Writer, c *bench.Convergence) {
	type pair struct{ v4, dual bench.ConvergenceSize }
	var pairs []pair
	for _, d := range c.Sizes {
		if d.Family != bench.FamilyDual {
			continue
		}
		for _, v4 := range c.Sizes {
			if v4.Family != bench.FamilyDual && v4.Peers == d.Peers {
				pairs = append(pairs, pair{v4, d})
			}
		}
	}
	if len(pairs) == 0 {
		return
	}
	fmt.Fprintf(out, "\nDual-stack beside IPv4-only, same run and peer count (a dual-stack peer: twice the kernel entries)\n")
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "  \tIPv4-only\tdual-stack\tratio")
	for _, p := range pairs {
		ratio := func(label string, v4, dual float64, format string, targeted bool) {
			r := dual / v4
			mark := ""
			if targeted {
				mark = target(r <= dualStackTarget, fmt.Sprintf("target <= %.1fx", dualStackTarget))
			}
			fmt.Fprintf(w, "  N = %d: %s\t"+format+"\t"+format+"\t%.2fx%s\n", p.v4.Peers, label, v4, dual, r, mark)
		}
		ratio("cold start to all entries (median)", p.v4.ConvergedSec, p.dual.ConvergedSec, "%.2f s", true)
		// CPU, not wall time: what other load on the machine hardly moves.
		ratio("agent CPU to all entries (median)", p.v4.ColdStartCPUSec, p.dual.ColdStartCPUSec, "%.2f s", false)
		ratio("agent VmRSS", float64(p.v4.VmRSSKiB)/1024, float64(p.dual.VmRSSKiB)/1024, "%.1f MiB", true)
		ratio("agent VmHWM", float64(p.v4.VmHWMKiB)/1024, float64(p.dual.VmHWMKiB)/1024, "%.1f MiB", false)
		ratio("no-change reconcile", p.v4.NoopReconcileMs, p.dual.NoopReconcileMs, "%.1f ms", false)
		// An empty ratio cell, not none: the next pair stays in the same tabwriter columns.
		fmt.Fprintf(w, "  N = %d: load average (1 min) at the cold start\t%s\t%s\t\n", p.v4.Peers, orUnknown(p.v4.LoadAverage), orUnknown(p.dual.LoadAverage))
	}
	w.Flush()
}

// familySuffix marks a dual-stack column.
func familySuffix(z bench.ConvergenceSize) string {
	if z.Family == bench.FamilyDual {
		return " dual-stack"
	}
	return ""
}

// entriesPerPeer is what a peer calls for in the kernel; results without
// the figure are from an IPv4-only run (route, neighbour, FDB entry).
func entriesPerPeer(z bench.ConvergenceSize) int {
	if z.EntriesPerPeer == 0 {
		return 3
	}
	return z.EntriesPerPeer
}

func orUnknown(s string) string {
	if s == "" {
		return "?"
	}
	return s
}

func medianRange(xs []float64) string {
	lo, hi := bench.Spread(xs)
	return fmt.Sprintf("%.0f ms (%.0f - %.0f, n=%d)", bench.Median(xs), lo, hi, len(xs))
}

// printBesideFlanneld prints BenchmarkBesideFlanneld's table: a column per
// agent and peer count, then whether overlayd's batch changes were as fast
// as flanneld's at each count.
func printBesideFlanneld(out io.Writer, r *bench.BesideFlanneld) {
	if r == nil || len(r.Sizes) == 0 {
		fmt.Fprintln(out, "\nBeside flanneld: not measured")
		return
	}
	fmt.Fprintf(out, "\nBeside flanneld: the real flanneld and overlayd, one after the other, as the agent of one node (vxlan, IPv4),\n")
	fmt.Fprintf(out, "N peer Nodes of kubelet size with flannel's annotations in a real API server; cold start waited for up to %.0f s\n", r.LimitSec)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	row := func(label string, cell func(bench.AgentFigures) string) {
		fmt.Fprintf(w, "  %s", label)
		for _, z := range r.Sizes {
			for _, a := range z.Agents {
				fmt.Fprintf(w, "\t%s", cell(a))
			}
		}
		fmt.Fprintln(w)
	}
	// measured is cell for an agent that programmed every peer; the others
	// have no figure after their cold start.
	measured := func(cell func(bench.AgentFigures) string) func(bench.AgentFigures) string {
		return func(a bench.AgentFigures) string {
			if !a.Programmed {
				return "-"
			}
			return cell(a)
		}
	}
	fmt.Fprintf(w, "  ")
	for _, z := range r.Sizes {
		for _, a := range z.Agents {
			fmt.Fprintf(w, "\t%s %d", a.Agent, z.Peers)
		}
	}
	fmt.Fprintln(w)
	row("start -> every peer's route, neighbour, FDB entry", func(a bench.AgentFigures) string {
		if !a.Programmed {
			return "not programmed (" + a.Entries + ")"
		}
		return fmt.Sprintf("%.2f s", a.ColdStartSec)
	})
	row("VmRSS then", measured(func(a bench.AgentFigures) string { return fmt.Sprintf("%.1f MiB", float64(a.RSSKiB)/1024) }))
	row("CPU seconds until then", measured(func(a bench.AgentFigures) string { return fmt.Sprintf("%.2f", a.CPUSec) }))
	row(fmt.Sprintf("%d Nodes added -> programmed", r.BatchChange), measured(func(a bench.AgentFigures) string { return fmt.Sprintf("%.2f s", a.AddSec) }))
	row(fmt.Sprintf("%d Nodes deleted -> gone", r.BatchChange), measured(func(a bench.AgentFigures) string { return fmt.Sprintf("%.2f s", a.DeleteSec) }))
	w.Flush()
	for _, z := range r.Sizes {
		if len(z.Agents) != 2 {
			continue
		}
		o, f := z.Agents[0], z.Agents[1]
		switch {
		case !o.Programmed:
			fmt.Fprintf(out, "  N = %d: overlayd did not program every peer%s\n", z.Peers, target(false, "target: batch changes no slower than flanneld"))
		case !f.Programmed:
			fmt.Fprintf(out, "  N = %d: flanneld did not program every peer within %.0f s: nothing to compare its batch changes with\n", z.Peers, r.LimitSec)
		default:
			fmt.Fprintf(out, "  N = %d: added %.2f s vs %.2f s, deleted %.2f s vs %.2f s%s\n", z.Peers, o.AddSec, f.AddSec, o.DeleteSec, f.DeleteSec,
				target(o.AddSec <= f.AddSec && o.DeleteSec <= f.DeleteSec, "target: no slower than flanneld"))
		}
	}
}

func target(met bool, what string) string {
	if met {
		return "  [" + what + ": met]"
	}
	return "  [" + what + ": NOT MET]"
}
