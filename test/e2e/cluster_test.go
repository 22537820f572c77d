// Package e2e runs the real overlayd binary on nodes built from network
// namespaces, against a real kube-apiserver, with real traffic between pods.
package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	harness "github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/lab"
)

// overlaydBin is the binary under test, built once by TestMain.
var overlaydBin string

func TestMain(m *testing.M) {
	bin, remove, err := harness.BuildOverlayd()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	overlaydBin = bin
	// A crashed earlier run may have left namespaces behind.
	lab.Sweep(labPrefix)
	code := m.Run()
	remove()
	os.Exit(code)
}

const (
	labPrefix   = "ovlT"
	clusterCIDR = "10.244.0.0/16"
)

// agentFlags come before a test's own flags on every agent.
var agentFlags = []string{"--resync-period", "10s", "--log-level", "debug"}

// clusterOptions describe a test cluster.
type clusterOptions struct {
	Nodes        int
	RoutedNodes  int // nodes on a second L2 segment, reached through a router
	ExternalHost bool
	NetConf      string   // net-conf.json; default vxlan on clusterCIDR
	Args         []string // extra overlayd flags for every node
	PodsPerNode  int      // default 1
	CNIPods      bool     // attach pods with the real CNI plugins
	// FlanneldNodes run the real flanneld instead of overlayd, with
	// FlanneldArgs (harness.Options).
	FlanneldNodes []string
	FlanneldArgs  []string
	// NoWait returns as soon as the agents are started: no waiting for
	// readiness, no pods.
	NoWait bool
	// BeforeAgents runs on each node once its Node object has a podCIDR,
	// before its agent starts.
	BeforeAgents func(c *cluster, n *lab.Node, podCIDR netip.Prefix)
}

// cluster is the shared harness's cluster (control plane with
// kube-controller-manager, a lab of nodes, an overlayd agent per node and
// pods) inside a test.
type cluster struct {
	*harness.Cluster
	t *testing.T
	// directRouting says which nodes run vxlan with DirectRouting, which
	// the kernel state depends on but no node publishes.
	directRouting map[string]bool
}

func newCluster(t *testing.T, opts clusterOptions) *cluster {
	t.Helper()
	if opts.NetConf == "" {
		opts.NetConf = `{"Network": "` + clusterCIDR + `", "Backend": {"Type": "vxlan"}}`
	}
	if opts.PodsPerNode == 0 {
		opts.PodsPerNode = 1
	}
	c := &cluster{t: t, directRouting: map[string]bool{}}
	hopts := harness.Options{
		Prefix: labPrefix, Nodes: opts.Nodes, RoutedNodes: opts.RoutedNodes, ExternalHost: opts.ExternalHost,
		NetConf: opts.NetConf, Overlayd: overlaydBin, Args: slices.Concat(agentFlags, opts.Args),
		PodsPerNode: opts.PodsPerNode, CNIPods: opts.CNIPods, NoWait: opts.NoWait,
		FlanneldNodes: opts.FlanneldNodes, FlanneldArgs: opts.FlanneldArgs,
	}
	if opts.BeforeAgents != nil {
		hopts.BeforeAgent = func(hc *harness.Cluster, n *lab.Node, podCIDR netip.Prefix) error {
			c.Cluster = hc
			opts.BeforeAgents(c, n, podCIDR)
			return nil
		}
	}
	// Each cluster has its own control plane: agents see every Node in
	// their API server, and labs reuse underlay addresses.
	c.Cluster = harness.New(t, hopts)
	return c
}

// writeNetConf replaces the node's net-conf.json atomically.
func (c *cluster) writeNetConf(n *lab.Node, conf string) {
	c.t.Helper()
	if err := c.WriteNetConf(n, conf); err != nil {
		c.t.Fatal(err)
	}
}

// restartAgentWithArgs restarts the node's agent with other extra flags.
func (c *cluster) restartAgentWithArgs(n *lab.Node, args ...string) {
	c.t.Helper()
	if err := c.RestartAgent(n, slices.Concat(agentFlags, args)); err != nil {
		c.t.Fatal(err)
	}
	c.waitReady(n)
}

// health fetches an endpoint of the node's health server.
func (c *cluster) health(n *lab.Node, path string) (int, string, error) {
	return c.Health(context.Background(), n, path)
}

func (c *cluster) waitReady(n *lab.Node) {
	c.t.Helper()
	if _, err := c.WaitReady(context.Background(), n, harness.ReadyTimeout); err != nil {
		c.t.Fatal(err)
	}
}

// requireFullMesh asserts that every pod reaches every other pod, over
// each address family the pods have.
func (c *cluster) requireFullMesh(pods []*lab.Pod) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, v6 := range podFamilies(pods) {
		m := lab.CheckMatrixFamily(ctx, pods, 20*time.Second, v6)
		if !m.OK() {
			c.t.Fatalf("pods cannot all reach each other over %s:\n%s", familyName(v6), m)
		}
	}
}

// podFamilies are the address families any of the pods has (v6: IPv6).
func podFamilies(pods []*lab.Pod) []bool {
	var v4, v6 bool
	for _, p := range pods {
		v4, v6 = v4 || p.IP.IsValid(), v6 || p.IP6.IsValid()
	}
	var out []bool
	if v4 {
		out = append(out, false)
	}
	if v6 {
		out = append(out, true)
	}
	return out
}

func familyName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// ipJSON runs `ip -j` inside a node and decodes the result.
func ipJSON[T any](t *testing.T, n *lab.Node, args ...string) []T {
	t.Helper()
	v, err := readIPJSON[T](n, args...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func readIPJSON[T any](n *lab.Node, args ...string) ([]T, error) {
	v, err := lab.IPJSON[T](context.Background(), &n.Host, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", n.Name, err)
	}
	return v, nil
}

// node returns the lab node by index (0-based).
func (c *cluster) node(i int) *lab.Node { return c.Lab.Nodes[i] }

// metricValue sums a metric over all its label sets, from the node's
// /metrics endpoint.
func metricValue(t *testing.T, c *cluster, n *lab.Node, name string) float64 {
	t.Helper()
	m, err := c.Metrics(context.Background(), n)
	if err != nil {
		t.Fatal(err)
	}
	return m.Sum(name)
}

func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}
