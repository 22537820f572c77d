package bench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"

	harness "github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/lab"
)

// The benchmarks build their clusters with test/cluster, the harness the
// end-to-end tests use, where a benchmark differs: agents log at info
// (debug logging would be measured too), the harness can assign podCIDRs
// itself so that no controller manager touches thousands of Nodes while
// figures are taken, and agents can be started by the benchmark.

const labPrefix = "ovlH"

// overlaydBin is the binary under test: $OVERLAYD_BIN (make bench passes
// bin/overlayd), else built from ./cmd/overlayd by TestMain.
var overlaydBin string

// interrupted ends on SIGINT or SIGTERM. Waits and iperf3 runs watch it and
// fail the benchmark, so that its cleanups still remove every namespace,
// process and directory; a signal's default action would exit at once.
var interrupted = context.Background()

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
		// `go test ./...` without -bench: there is nothing to set up.
		os.Exit(m.Run())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	interrupted = ctx
	// A crashed earlier run may have left namespaces behind.
	lab.Sweep(labPrefix)
	overlaydBin = os.Getenv("OVERLAYD_BIN")
	remove := func() {}
	if overlaydBin == "" {
		var err error
		if overlaydBin, remove, err = harness.BuildOverlayd("-trimpath"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	} else if _, err := os.Stat(overlaydBin); err != nil {
		fmt.Fprintf(os.Stderr, "OVERLAYD_BIN: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	stop()
	remove()
	os.Exit(code)
}

type clusterOptions struct {
	Nodes   int
	NetConf string   // net-conf.json
	Args    []string // extra overlayd flags
	// AssignPodCIDRs: the harness sets the lab nodes' spec.podCIDR (the
	// node index's subnet of the network) and runs no controller manager.
	// Otherwise node IPAM of a kube-controller-manager assigns them.
	AssignPodCIDRs bool
	// ManualAgents: start no agents and add no pods; the benchmark does.
	ManualAgents bool
	CNIPods      bool // one pod per node, attached by the real CNI plugins
}

// cluster is the shared harness's cluster inside a benchmark.
type cluster struct {
	*harness.Cluster
	tb testing.TB
}

// pollInterval is how often waits check again: readiness times are
// figures here.
const pollInterval = 50 * time.Millisecond

// newCluster builds a cluster; everything goes when the benchmark ends.
func newCluster(tb testing.TB, opts clusterOptions) *cluster {
	tb.Helper()
	c := &cluster{tb: tb, Cluster: harness.New(tb, harness.Options{
		Prefix: labPrefix, Nodes: opts.Nodes, NetConf: opts.NetConf, AssignPodCIDRs: opts.AssignPodCIDRs,
		Overlayd: overlaydBin,
		// Info: debug logging would be measured too.
		Args:        append([]string{"--log-level", "info"}, opts.Args...),
		PodsPerNode: 1, CNIPods: opts.CNIPods,
		// The agents start below, where a signal can interrupt the waits.
		NoAgents: true,
		// Quiet lab: a benchmark's log is cut after ten lines, keep them for figures.
		Logf:          func(string, ...any) {},
		HealthTimeout: 5 * time.Second, PollInterval: pollInterval,
	})}
	if !opts.ManualAgents {
		if err := c.Up(interrupted); err != nil {
			tb.Fatal(err)
		}
	}
	return c
}

func (c *cluster) startAgent(n *lab.Node) *lab.Process {
	c.tb.Helper()
	p, err := c.StartAgent(n)
	if err != nil {
		c.tb.Fatal(err)
	}
	return p
}

// waitReady waits for the agent's /readyz and returns when it answered ok.
func (c *cluster) waitReady(n *lab.Node, timeout time.Duration) time.Time {
	c.tb.Helper()
	at, err := c.WaitReady(interrupted, n, timeout)
	if err != nil {
		c.tb.Fatal(err)
	}
	return at
}

// subnetEnv reads a variable of the node's subnet.env, as the CNI plugin does.
func subnetEnv(tb testing.TB, n *lab.Node, key string) string {
	tb.Helper()
	v, err := harness.SubnetEnv(n, key)
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

// metrics fetches the node agent's /metrics.
func (c *cluster) metrics(n *lab.Node) harness.Samples {
	c.tb.Helper()
	m, err := c.Metrics(interrupted, n)
	if err != nil {
		c.tb.Fatal(err)
	}
	return m
}

// waitFor polls cond every pollInterval until it holds or the timeout
// passes, then fails with the condition's last explanation.
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	tb.Helper()
	if err := harness.Poll(interrupted, timeout, pollInterval, cond); err != nil {
		tb.Fatalf("%s: %v", what, err)
	}
}

// pause waits for d, failing the benchmark if it is interrupted meanwhile.
func pause(tb testing.TB, d time.Duration) {
	tb.Helper()
	select {
	case <-interrupted.Done():
		tb.Fatal("interrupted")
	case <-time.After(d):
	}
}
