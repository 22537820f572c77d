package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/overlayd/overlayd/backend/udp"
	"github.com/overlayd/overlayd/backend/vxlan"
	"github.com/overlayd/overlayd/subnet/kube"
	"github.com/overlayd/overlayd/test/controlplane"
	"github.com/overlayd/overlayd/test/lab"
)

const (
	clusterCIDR = "10.244.0.0/16"
	healthzPort = 9910 // inside each node's namespace
	rbacPath    = "Documentation/rbac.yml"
	// annotationPrefix is overlayd's default --kube-annotation-prefix.
	annotationPrefix = kube.DefaultAnnotationPrefix + "/"
)

// cluster is what the demo built; every field may be nil if bringing it up
// stopped early, and teardown copes with that.
type cluster struct {
	opts     options
	overlayd string
	out      io.Writer

	dir    string // the demo's own temporary directory: admin kubeconfig, control plane logs
	cp     *controlplane.ControlPlane
	lab    *lab.Lab
	admin  kubernetes.Interface
	agents []*lab.Process
	pods   []*lab.Pod
}

// step prints what is being done, runs it, and prints how it went.
func (c *cluster) step(ctx context.Context, what string, fn func() error) error {
	fmt.Fprintf(c.out, "  %-66s ", what)
	start := time.Now()
	if err := fn(); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(c.out, "stopped")
		} else {
			fmt.Fprintln(c.out, "FAILED")
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	fmt.Fprintf(c.out, "%6s\n", since(start))
	return nil
}

// up builds the cluster step by step, stopping at the first failure or
// when ctx ends.
func (c *cluster) up(ctx context.Context) error {
	rbac, err := os.ReadFile(rbacPath)
	if err != nil {
		return fmt.Errorf("reading the RBAC manifest (run the demo from the repository root): %w", err)
	}
	if c.dir, err = os.MkdirTemp("", "overlayd-demo-"); err != nil {
		return err
	}
	steps := []struct {
		what string
		fn   func() error
	}{
		{"control plane: etcd, kube-apiserver, kube-controller-manager", func() error { return c.startControlPlane(ctx, rbac) }},
		{fmt.Sprintf("%d nodes on underlay %s (namespaces %s-*)", c.opts.nodes, lab.Segment0, Prefix), c.startLab},
		{"Node objects; kube-controller-manager assigns podCIDRs", func() error { return c.registerNodes(ctx) }},
		{"overlayd on every node: lease, kernel state, /readyz", func() error { return c.startAgents(ctx) }},
		{fmt.Sprintf("%d pods per node: CNI loopback, flannel -> bridge, host-local", c.opts.pods), c.attachPods},
	}
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := c.step(ctx, s.what, s.fn); err != nil {
			return err
		}
	}
	return nil
}

func (c *cluster) startControlPlane(ctx context.Context, rbac []byte) error {
	logDir := filepath.Join(c.dir, "controlplane")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return err
	}
	cp, err := controlplane.Start(controlplane.Options{
		ControllerManager: true, ClusterCIDR: clusterCIDR, NodeCIDRMaskSize: 24, LogDir: logDir,
	})
	if err != nil {
		return err
	}
	c.cp = cp
	if c.admin, err = kubernetes.NewForConfig(cp.Config(controlplane.Admin)); err != nil {
		return err
	}
	if err := cp.WriteKubeconfig(c.adminKubeconfig(), controlplane.Admin); err != nil {
		return err
	}
	if _, err := cp.Apply(ctx, controlplane.Admin, rbac, controlplane.ApplyOptions{}); err != nil {
		return fmt.Errorf("applying %s: %w", rbacPath, err)
	}
	return nil
}

func (c *cluster) adminKubeconfig() string { return filepath.Join(c.dir, "admin.kubeconfig") }

func (c *cluster) startLab() error {
	l, err := lab.Start(lab.Options{Prefix: Prefix, Nodes: c.opts.nodes, ControlPlane: c.cp})
	if err != nil {
		return err
	}
	c.lab = l
	return nil
}

// registerNodes creates the Node objects, as each node's kubelet would,
// and waits for the podCIDRs kube-controller-manager assigns.
func (c *cluster) registerNodes(ctx context.Context) error {
	for _, n := range c.lab.Nodes {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}
		if _, err := c.admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("creating Node %s: %w", n.Name, err)
		}
	}
	return poll(ctx, 30*time.Second, func() (bool, string) {
		for _, n := range c.lab.Nodes {
			node, err := c.admin.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			if node.Spec.PodCIDR == "" {
				return false, n.Name + " has no podCIDR yet"
			}
		}
		return true, ""
	})
}

// netConf is the net-conf.json every node gets (in a cluster, the
// kube-overlayd ConfigMap).
func (c *cluster) netConf() string {
	return fmt.Sprintf(`{"Network": %q, "Backend": {"Type": %q}}`, clusterCIDR, c.opts.backend) + "\n"
}

// startAgents runs overlayd on every node as the DaemonSet would, with the
// kube-system/overlayd identity bound by Documentation/rbac.yml, and waits
// until each is ready and has published its lease.
func (c *cluster) startAgents(ctx context.Context) error {
	for _, n := range c.lab.Nodes {
		conf := filepath.Join(n.Dir, "net-conf.json")
		if err := os.WriteFile(conf, []byte(c.netConf()), 0o644); err != nil {
			return err
		}
		p, err := n.StartWithEnv("overlayd", []string{"NODE_NAME=" + n.Name}, c.overlayd,
			"--kubeconfig-file", n.Kubeconfig,
			"--net-config-path", conf,
			"--subnet-file", n.SubnetEnv,
			"--healthz-ip", "127.0.0.1", "--healthz-port", fmt.Sprint(healthzPort),
		)
		if err != nil {
			return fmt.Errorf("starting overlayd on %s: %w", n.Name, err)
		}
		c.agents = append(c.agents, p)
	}
	for i, n := range c.lab.Nodes {
		p := c.agents[i]
		err := poll(ctx, 60*time.Second, func() (bool, string) {
			if !p.Running() {
				return false, fmt.Sprintf("overlayd on %s exited: %v", n.Name, p.ExitErr())
			}
			code, body, err := readyz(ctx, n)
			if err != nil {
				return false, err.Error()
			}
			return code == http.StatusOK, strings.TrimSpace(body)
		})
		if err != nil {
			return fmt.Errorf("overlayd on %s not ready: %w", n.Name, err)
		}
	}
	return poll(ctx, 30*time.Second, func() (bool, string) {
		nodes, err := c.admin.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, node := range nodes.Items {
			if node.Annotations[annotationPrefix+"backend-type"] != c.opts.backend {
				return false, node.Name + " has not published its lease"
			}
		}
		return len(nodes.Items) == len(c.lab.Nodes), fmt.Sprintf("%d Nodes", len(nodes.Items))
	})
}

// readyz asks the node's overlayd health server, inside the node.
func readyz(ctx context.Context, n *lab.Node) (int, string, error) {
	client := &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return n.Dial(ctx, network, addr)
		}},
	}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/readyz", healthzPort), nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), nil
}

// attachPods attaches the pods as kubelet would with flannel's conflist.
func (c *cluster) attachPods() error {
	for _, n := range c.lab.Nodes {
		for i := range c.opts.pods {
			p, err := n.AddCNIPod(fmt.Sprintf("pod-%d%c", n.Index, 'a'+i))
			if err != nil {
				return err
			}
			c.pods = append(c.pods, p)
		}
	}
	return nil
}

// printLeases prints every node's lease as the API server has it.
func (c *cluster) printLeases(ctx context.Context) {
	fmt.Fprintf(c.out, "\nLeases (Node objects in the API server: spec.podCIDR and %s* annotations):\n", annotationPrefix)
	nodes, err := c.admin.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Fprintf(c.out, "  listing Nodes: %v\n", err)
		return
	}
	w := tabwriter.NewWriter(c.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "  NODE\tPOD CIDR\tPUBLIC IP\tBACKEND\tBACKEND DATA")
	for _, n := range nodes.Items {
		a := n.Annotations
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\n", n.Name, n.Spec.PodCIDR,
			a[annotationPrefix+"public-ip"], a[annotationPrefix+"backend-type"], a[annotationPrefix+"backend-data"])
	}
	w.Flush()
}

func (c *cluster) checkMatrix(ctx context.Context) *lab.Matrix {
	return lab.CheckMatrix(ctx, c.pods, 30*time.Second)
}

// printExplore prints commands to look around the running cluster.
func (c *cluster) printExplore(hold bool) {
	if hold {
		fmt.Fprintln(c.out, "\nExplore from another shell while the cluster is up:")
	} else {
		fmt.Fprintln(c.out, "\nExplore (run `make demo` in a terminal, or with DEMO_HOLD=1, to keep the cluster up):")
	}
	from, to := c.pods[0], c.pods[len(c.pods)-1]
	node := c.lab.Nodes[0]
	lines := [][2]string{
		{fmt.Sprintf("%s -> %s:", from.Name, to.Name), fmt.Sprintf("ip netns exec %s ping -c 3 %s", from.NS, to.IP)},
		{"overlayd's routes:", fmt.Sprintf("ip -n %s route show proto 79", node.NS)},
	}
	switch c.opts.backend {
	case "vxlan":
		lines = append(lines, [2]string{"its vxlan device:", fmt.Sprintf("ip -n %s -d link show %s", node.NS, vxlan.DeviceName(1, vxlan.DefaultPort))})
	case "udp":
		lines = append(lines, [2]string{"its tun device:", fmt.Sprintf("ip -n %s -d link show %s", node.NS, udp.DeviceName)})
	}
	lines = append(lines,
		[2]string{"the CNI plugin's input:", "cat " + node.SubnetEnv},
		[2]string{"all namespaces:", fmt.Sprintf("ip netns list | grep %s-%s-", c.lab.Prefix, c.lab.ID)},
		[2]string{"the API (kubectl):", fmt.Sprintf("kubectl --kubeconfig %s describe node node-1", c.adminKubeconfig())},
		[2]string{"overlayd logs:", filepath.Join(c.lab.Dir, "node-*", "overlayd.log")},
		[2]string{"control plane logs:", filepath.Join(c.dir, "controlplane", "*.log")},
	)
	w := tabwriter.NewWriter(c.out, 0, 0, 1, ' ', 0)
	for _, l := range lines {
		fmt.Fprintf(w, "  %s\t%s\n", l[0], l[1])
	}
	w.Flush()
}

// printLogTails shows the end of every overlayd log, for failures.
func (c *cluster) printLogTails() {
	for _, p := range c.agents {
		fmt.Fprintf(c.out, "\n%s\n", strings.TrimSpace(p.Tail(1500)))
	}
	if c.dir != "" {
		fmt.Fprintf(c.out, "\ncontrol plane logs (removed on exit): %s\n", filepath.Join(c.dir, "controlplane"))
	}
}

// teardown stops every process, deletes every namespace and directory the
// demo made, then checks that nothing is left. It reports whether that
// holds.
func (c *cluster) teardown() bool {
	start := time.Now()
	fmt.Fprint(c.out, "\nTearing down: ")
	var errs []error
	var namespaces []string
	var dirs []string
	if c.lab != nil {
		namespaces = c.lab.NamespaceNames()
		dirs = append(dirs, c.lab.Dir)
		if err := c.lab.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.cp != nil {
		dirs = append(dirs, c.cp.Dir)
		c.cp.Stop()
	}
	if c.dir != "" {
		dirs = append(dirs, c.dir)
		if err := os.RemoveAll(c.dir); err != nil {
			errs = append(errs, err)
		}
	}
	for _, ns := range namespaces {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			errs = append(errs, fmt.Errorf("network namespace %s is still there", ns))
		}
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("directory %s is still there", d))
		}
	}
	if len(errs) > 0 {
		fmt.Fprintf(c.out, "INCOMPLETE after %s:\n", since(start))
		for _, err := range errs {
			fmt.Fprintf(c.out, "  %v\n", err)
		}
		fmt.Fprintf(c.out, "  (the next `make demo` sweeps namespaces %s-* of runs that are gone)\n", Prefix)
		return false
	}
	fmt.Fprintf(c.out, "%d namespaces, %d processes and %d directories removed in %s; nothing left.\n",
		len(namespaces), c.processCount(), len(dirs), since(start))
	return true
}

// processCount is how many long-running processes the demo started.
func (c *cluster) processCount() int {
	n := len(c.agents)
	if c.cp != nil {
		n += 3 // etcd, kube-apiserver, kube-controller-manager
	}
	return n
}

// poll calls cond until it holds, ctx ends, or timeout passes; the error
// carries cond's last explanation.
func poll(ctx context.Context, timeout time.Duration, cond func() (bool, string)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, detail := cond()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			if detail == "" {
				return ctx.Err()
			}
			return fmt.Errorf("%w (last: %s)", ctx.Err(), detail)
		case <-tick.C:
		}
	}
}
