package bench

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/subnet"
	"github.com/overlayd/overlayd/test/controlplane"
	"github.com/overlayd/overlayd/test/lab"
)

// This file is the benchmarks' cluster harness: a real control plane, a lab
// of namespace nodes, the real overlayd binary on each node, pods. It
// follows test/e2e's harness; it differs where a benchmark must: agents log
// at info (debug logging would be measured too), the harness can assign
// podCIDRs itself so that no controller manager touches thousands of Nodes
// while figures are taken, and agents can be started by the benchmark.

const (
	labPrefix   = "ovlH"
	healthzPort = 9910
)

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
	var tmp string
	if overlaydBin == "" {
		var err error
		if tmp, err = os.MkdirTemp("", "overlayd-bench-bin-"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		overlaydBin = filepath.Join(tmp, "overlayd")
		build := exec.Command("go", "build", "-trimpath", "-o", overlaydBin, "../../cmd/overlayd")
		if out, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building overlayd: %v\n%s", err, out)
			os.RemoveAll(tmp)
			os.Exit(1)
		}
	} else if _, err := os.Stat(overlaydBin); err != nil {
		fmt.Fprintf(os.Stderr, "OVERLAYD_BIN: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	stop()
	if tmp != "" {
		os.RemoveAll(tmp)
	}
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

type cluster struct {
	tb     testing.TB
	cp     *controlplane.ControlPlane
	lab    *lab.Lab
	admin  kubernetes.Interface
	net    *subnet.Config
	opts   clusterOptions
	agents map[string]*lab.Process
	pods   []*lab.Pod
}

// newCluster builds a cluster; everything goes when the benchmark ends.
func newCluster(tb testing.TB, opts clusterOptions) *cluster {
	tb.Helper()
	netConf, err := subnet.ParseConfig([]byte(opts.NetConf))
	if err != nil {
		tb.Fatalf("net-conf.json: %v", err)
	}
	cpOpts := controlplane.Options{}
	if !opts.AssignPodCIDRs {
		cpOpts = controlplane.Options{ControllerManager: true, ClusterCIDR: netConf.Network.String(), NodeCIDRMaskSize: netConf.SubnetLen}
	}
	cp := controlplane.StartT(tb, cpOpts)
	c := &cluster{
		tb:     tb,
		cp:     cp,
		admin:  kubernetes.NewForConfigOrDie(cp.Config(controlplane.Admin)),
		net:    netConf,
		opts:   opts,
		agents: map[string]*lab.Process{},
	}
	rbac, err := os.ReadFile("../../Documentation/rbac.yml")
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := cp.Apply(context.Background(), controlplane.Admin, rbac, controlplane.ApplyOptions{}); err != nil {
		tb.Fatalf("applying Documentation/rbac.yml: %v", err)
	}
	// Quiet lab: a benchmark's log is cut after ten lines, keep them for figures.
	c.lab = lab.New(tb, lab.Options{Prefix: labPrefix, Nodes: opts.Nodes, ControlPlane: cp, Logf: func(string, ...any) {}})
	for _, n := range c.lab.Nodes {
		c.registerNode(n)
		c.writeNetConf(n)
	}
	if opts.ManualAgents {
		return c
	}
	for _, n := range c.lab.Nodes {
		c.startAgent(n)
	}
	for _, n := range c.lab.Nodes {
		c.waitReady(n, 60*time.Second)
	}
	for _, n := range c.lab.Nodes {
		c.addPod(n, n.Name+"-p0")
	}
	return c
}

// labPodCIDR is the subnet the harness assigns to lab node k: the k-th of
// the network (index 0 stays free, as node IPAM leaves it).
func (c *cluster) labPodCIDR(n *lab.Node) netip.Prefix {
	p, err := ip.NthSubnet(c.net.Network, c.net.SubnetLen, uint64(n.Index))
	if err != nil {
		c.tb.Fatalf("pod CIDR of %s: %v", n.Name, err)
	}
	return p
}

// registerNode creates the Node object, as a kubelet would.
func (c *cluster) registerNode(n *lab.Node) {
	c.tb.Helper()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}
	if c.opts.AssignPodCIDRs {
		cidr := c.labPodCIDR(n).String()
		node.Spec.PodCIDR, node.Spec.PodCIDRs = cidr, []string{cidr}
	}
	if _, err := c.admin.CoreV1().Nodes().Create(context.Background(), node, metav1.CreateOptions{}); err != nil {
		c.tb.Fatalf("creating node %s: %v", n.Name, err)
	}
}

func netConfPath(n *lab.Node) string { return filepath.Join(n.Dir, "net-conf.json") }

func (c *cluster) writeNetConf(n *lab.Node) {
	c.tb.Helper()
	if err := os.WriteFile(netConfPath(n), []byte(c.opts.NetConf), 0o644); err != nil {
		c.tb.Fatal(err)
	}
}

func (c *cluster) startAgent(n *lab.Node) *lab.Process {
	c.tb.Helper()
	args := []string{overlaydBin,
		"--kubeconfig-file", n.Kubeconfig,
		"--net-config-path", netConfPath(n),
		"--subnet-file", n.SubnetEnv,
		"--healthz-ip", "127.0.0.1", "--healthz-port", strconv.Itoa(healthzPort),
		"--log-level", "info",
	}
	args = append(args, c.opts.Args...)
	if p := c.agents[n.Name]; p != nil {
		if err := p.Start(); err != nil {
			c.tb.Fatalf("starting overlayd on %s again: %v", n.Name, err)
		}
		return p
	}
	p, err := n.StartWithEnv("overlayd", []string{"NODE_NAME=" + n.Name}, args...)
	if err != nil {
		c.tb.Fatalf("starting overlayd on %s: %v", n.Name, err)
	}
	c.agents[n.Name] = p
	return p
}

// health fetches an endpoint of the node's health server.
func health(n *lab.Node, path string) (int, string, error) {
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return n.Dial(ctx, network, addr)
		}},
	}
	defer client.CloseIdleConnections()
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d%s", healthzPort, path))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// waitReady waits for the agent's /readyz and returns when it answered ok.
func (c *cluster) waitReady(n *lab.Node, timeout time.Duration) time.Time {
	c.tb.Helper()
	var at time.Time
	waitFor(c.tb, timeout, fmt.Sprintf("overlayd on %s ready", n.Name), func() (bool, string) {
		if p := c.agents[n.Name]; !p.Running() {
			c.tb.Fatalf("overlayd on %s exited: %v\n%s", n.Name, p.ExitErr(), p.Tail(3000))
		}
		code, body, err := health(n, "/readyz")
		if err != nil {
			return false, err.Error()
		}
		at = time.Now()
		return code == http.StatusOK, body
	})
	return at
}

// subnetEnv reads a variable of the node's subnet.env, as the CNI plugin does.
func subnetEnv(tb testing.TB, n *lab.Node, key string) string {
	tb.Helper()
	data, err := os.ReadFile(n.SubnetEnv)
	if err != nil {
		tb.Fatalf("reading subnet.env of %s: %v", n.Name, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, key+"="); ok {
			return v
		}
	}
	tb.Fatalf("no %s in %s:\n%s", key, n.SubnetEnv, data)
	return ""
}

func (c *cluster) addPod(n *lab.Node, name string) *lab.Pod {
	c.tb.Helper()
	var p *lab.Pod
	var err error
	if c.opts.CNIPods {
		p, err = n.AddCNIPod(name)
	} else {
		var sub netip.Prefix
		if sub, err = netip.ParsePrefix(subnetEnv(c.tb, n, "FLANNEL_SUBNET")); err == nil {
			p, err = n.AddPod(name, sub.Masked())
		}
	}
	if err != nil {
		c.tb.Fatalf("adding pod %s: %v", name, err)
	}
	c.pods = append(c.pods, p)
	return p
}

// metrics fetches the node agent's /metrics and returns the samples by
// their full name with labels, e.g. `overlayd_leases` or
// `overlayd_kernel_entries{kind="route"}`.
func metrics(tb testing.TB, n *lab.Node) map[string]float64 {
	tb.Helper()
	code, body, err := health(n, "/metrics")
	if err != nil || code != http.StatusOK {
		tb.Fatalf("/metrics on %s: %d %v", n.Name, code, err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// waitFor polls cond every 50 ms until it holds or the timeout passes,
// then fails with the condition's last explanation.
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not true after %s: %s", what, timeout, detail)
		}
		pause(tb, 50*time.Millisecond)
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

// procStatus returns VmRSS and VmHWM (KiB) of a process.
func procStatus(pid int) (rss, hwm int64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			rss, _ = strconv.ParseInt(f[1], 10, 64)
		case "VmHWM:":
			hwm, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	return rss, hwm, nil
}

// cpuSeconds is the user+system CPU time a process has used.
func cpuSeconds(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the parenthesised command; utime and stime are the
	// 14th and 15th of the whole line, in clock ticks (USER_HZ, 100).
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100, nil
}
