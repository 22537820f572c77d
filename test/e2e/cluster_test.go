// Package e2e runs the real overlayd binary on nodes built from network
// namespaces, against a real kube-apiserver, with real traffic between pods.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/overlayd/overlayd/test/controlplane"
	"github.com/overlayd/overlayd/test/lab"
)

// overlaydBin is the binary under test, built once by TestMain.
var overlaydBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "overlayd-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	overlaydBin = filepath.Join(dir, "overlayd")
	build := exec.Command("go", "build", "-o", overlaydBin, "../../cmd/overlayd")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building overlayd: %v\n%s", err, out)
		os.Exit(1)
	}
	// A crashed earlier run may have left namespaces behind.
	lab.Sweep(labPrefix)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const (
	labPrefix   = "ovlT"
	clusterCIDR = "10.244.0.0/16"
	healthzPort = 9910
)

// clusterOptions describe a test cluster.
type clusterOptions struct {
	Nodes        int
	RoutedNodes  int // nodes on a second L2 segment, reached through a router
	ExternalHost bool
	NetConf      string   // net-conf.json; default vxlan on clusterCIDR
	Args         []string // extra overlayd flags for every node
	PodsPerNode  int      // default 1
	CNIPods      bool     // attach pods with the real CNI plugins
	// NoWait returns as soon as the agents are started: no waiting for
	// readiness, no pods.
	NoWait bool
	// BeforeAgents runs on each node once its Node object has a podCIDR,
	// before its agent starts.
	BeforeAgents func(c *cluster, n *lab.Node, podCIDR netip.Prefix)
}

// cluster is a control plane, a lab of nodes, an overlayd agent per node
// and pods.
type cluster struct {
	t      *testing.T
	cp     *controlplane.ControlPlane
	lab    *lab.Lab
	admin  kubernetes.Interface
	opts   clusterOptions
	agents map[string]*lab.Process
	pods   []*lab.Pod
}

func newCluster(t *testing.T, opts clusterOptions) *cluster {
	t.Helper()
	if opts.NetConf == "" {
		opts.NetConf = `{"Network": "` + clusterCIDR + `", "Backend": {"Type": "vxlan"}}`
	}
	if opts.PodsPerNode == 0 {
		opts.PodsPerNode = 1
	}
	// Each cluster has its own control plane: agents see every Node in
	// their API server, and labs reuse underlay addresses.
	cp := controlplane.StartT(t, controlplane.Options{ControllerManager: true, ClusterCIDR: clusterCIDR, NodeCIDRMaskSize: 24})
	c := &cluster{
		t:      t,
		cp:     cp,
		admin:  kubernetes.NewForConfigOrDie(cp.Config(controlplane.Admin)),
		opts:   opts,
		agents: map[string]*lab.Process{},
	}
	rbac, err := os.ReadFile("../../Documentation/rbac.yml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Apply(context.Background(), controlplane.Admin, rbac, controlplane.ApplyOptions{}); err != nil {
		t.Fatalf("applying Documentation/rbac.yml: %v", err)
	}
	c.lab = lab.New(t, lab.Options{
		Prefix: labPrefix, Nodes: opts.Nodes, RoutedNodes: opts.RoutedNodes,
		ExternalHost: opts.ExternalHost, ControlPlane: cp,
	})
	for _, n := range c.lab.Nodes {
		c.registerNode(n)
		c.writeNetConf(n, opts.NetConf)
		if opts.BeforeAgents != nil {
			opts.BeforeAgents(c, n, c.waitPodCIDR(n))
		}
		c.startAgent(n)
	}
	if opts.NoWait {
		return c
	}
	for _, n := range c.lab.Nodes {
		c.waitReady(n)
	}
	for _, n := range c.lab.Nodes {
		for i := range opts.PodsPerNode {
			c.addPod(n, fmt.Sprintf("%s-p%d", n.Name, i))
		}
	}
	return c
}

// registerNode creates the Node object, as a kubelet would; the
// controller manager assigns its podCIDR.
func (c *cluster) registerNode(n *lab.Node) {
	c.t.Helper()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}
	if _, err := c.admin.CoreV1().Nodes().Create(context.Background(), node, metav1.CreateOptions{}); err != nil {
		c.t.Fatalf("creating node %s: %v", n.Name, err)
	}
}

// waitPodCIDR waits for the controller manager to assign the node's podCIDR.
func (c *cluster) waitPodCIDR(n *lab.Node) netip.Prefix {
	c.t.Helper()
	var cidr netip.Prefix
	eventually(c.t, 30*time.Second, "podCIDR of "+n.Name, func() (bool, string) {
		node, err := c.admin.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{})
		if err != nil || node.Spec.PodCIDR == "" {
			return false, fmt.Sprint(err)
		}
		cidr = netip.MustParsePrefix(node.Spec.PodCIDR)
		return true, ""
	})
	return cidr
}

func (c *cluster) netConfPath(n *lab.Node) string { return filepath.Join(n.Dir, "net-conf.json") }

// writeNetConf replaces the node's net-conf.json atomically, the way a
// ConfigMap volume update does.
func (c *cluster) writeNetConf(n *lab.Node, conf string) {
	c.t.Helper()
	tmp := c.netConfPath(n) + ".tmp"
	if err := os.WriteFile(tmp, []byte(conf), 0o644); err != nil {
		c.t.Fatal(err)
	}
	if err := os.Rename(tmp, c.netConfPath(n)); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) startAgent(n *lab.Node) *lab.Process {
	c.t.Helper()
	p, err := n.StartWithEnv("overlayd", []string{"NODE_NAME=" + n.Name}, c.agentArgv(n)...)
	if err != nil {
		c.t.Fatalf("starting overlayd on %s: %v", n.Name, err)
	}
	c.agents[n.Name] = p
	return p
}

// agentArgv is the command line of a node's agent, with the cluster's
// current extra flags.
func (c *cluster) agentArgv(n *lab.Node) []string {
	args := []string{overlaydBin,
		"--kubeconfig-file", n.Kubeconfig,
		"--net-config-path", c.netConfPath(n),
		"--subnet-file", n.SubnetEnv,
		"--healthz-ip", "127.0.0.1", "--healthz-port", fmt.Sprint(healthzPort),
		"--resync-period", "10s",
		"--log-level", "debug",
	}
	return append(args, c.opts.Args...)
}

// restartAgentWithArgs restarts the node's agent with other extra flags.
func (c *cluster) restartAgentWithArgs(n *lab.Node, args ...string) {
	c.t.Helper()
	p := c.agents[n.Name]
	p.Stop()
	c.opts.Args = args
	p.Argv = c.agentArgv(n)
	if err := p.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.waitReady(n)
}

// health fetches an endpoint of the node's health server.
func (c *cluster) health(n *lab.Node, path string) (int, string, error) {
	client := &http.Client{
		Timeout: 2 * time.Second,
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
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), nil
}

func (c *cluster) waitReady(n *lab.Node) {
	c.t.Helper()
	eventually(c.t, 60*time.Second, fmt.Sprintf("overlayd on %s ready", n.Name), func() (bool, string) {
		if p := c.agents[n.Name]; !p.Running() {
			return false, fmt.Sprintf("agent exited: %v\n%s", p.ExitErr(), p.Tail(30))
		}
		code, body, err := c.health(n, "/readyz")
		if err != nil {
			return false, err.Error()
		}
		return code == http.StatusOK, body
	})
}

// subnetOf reads the node's lease from its subnet.env, as the CNI plugin does.
func (c *cluster) subnetOf(n *lab.Node) netip.Prefix {
	c.t.Helper()
	data, err := os.ReadFile(n.SubnetEnv)
	if err != nil {
		c.t.Fatalf("reading subnet.env of %s: %v", n.Name, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "FLANNEL_SUBNET="); ok {
			return netip.MustParsePrefix(v).Masked()
		}
	}
	c.t.Fatalf("no FLANNEL_SUBNET in %s:\n%s", n.SubnetEnv, data)
	return netip.Prefix{}
}

func (c *cluster) addPod(n *lab.Node, name string) *lab.Pod {
	c.t.Helper()
	var p *lab.Pod
	var err error
	if c.opts.CNIPods {
		p, err = n.AddCNIPod(name)
	} else {
		p, err = n.AddPod(name, c.subnetOf(n))
	}
	if err != nil {
		c.t.Fatalf("adding pod %s: %v", name, err)
	}
	c.pods = append(c.pods, p)
	return p
}

// podsOn returns the pods of a node.
func (c *cluster) podsOn(n *lab.Node) []*lab.Pod {
	var out []*lab.Pod
	for _, p := range c.pods {
		if p.Node == n {
			out = append(out, p)
		}
	}
	return out
}

// requireFullMesh asserts that every pod reaches every other pod.
func (c *cluster) requireFullMesh(pods []*lab.Pod) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m := lab.CheckMatrix(ctx, pods, 20*time.Second)
	if !m.OK() {
		c.t.Fatalf("pods cannot all reach each other:\n%s", m)
	}
}

// ipJSON runs `ip -j` inside a node and decodes the result.
func ipJSON[T any](t *testing.T, n *lab.Node, args ...string) []T {
	t.Helper()
	out, err := n.Exec(context.Background(), append([]string{"ip", "-j"}, args...)...)
	if err != nil {
		t.Fatalf("ip %s on %s: %v", strings.Join(args, " "), n.Name, err)
	}
	var v []T
	if strings.TrimSpace(out) == "" {
		return v
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("ip %s on %s: %v\n%s", strings.Join(args, " "), n.Name, err, out)
	}
	return v
}

// eventually polls cond until it holds or the timeout passes, then fails
// with the condition's last explanation.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ok, detail := cond()
		if ok {
			return
		}
		last = detail
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %s", what, timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// node returns the lab node by index (0-based).
func (c *cluster) node(i int) *lab.Node { return c.lab.Nodes[i] }

// metricValue sums a metric over all its label sets, from the node's
// /metrics endpoint.
func metricValue(t *testing.T, c *cluster, n *lab.Node, name string) float64 {
	t.Helper()
	code, body, err := c.health(n, "/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("/metrics on %s: %d %v", n.Name, code, err)
	}
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		fields := strings.Fields(line)
		var v float64
		if _, err := fmt.Sscan(fields[len(fields)-1], &v); err == nil {
			sum += v
		}
	}
	return sum
}

func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}
