package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/overlayd/overlayd/backend/udp"
	"github.com/overlayd/overlayd/backend/vxlan"
	"github.com/overlayd/overlayd/subnet/kube"
	"github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/controlplane"
	"github.com/overlayd/overlayd/test/lab"
)

const (
	clusterCIDR  = "10.244.0.0/16"
	clusterCIDR6 = "fd00:10:244::/56"
	// annotationPrefix is overlayd's default --kube-annotation-prefix.
	annotationPrefix = kube.DefaultAnnotationPrefix + "/"
)

// demo is what the demo built with the cluster harness (test/cluster); c is
// nil until the options are checked and its fields are nil until their
// step has run, and teardown copes with that.
type demo struct {
	opts     options
	overlayd string
	out      io.Writer

	dir   string // the demo's own temporary directory: admin kubeconfig, control plane logs
	c     *cluster.Cluster
	width int // of the steps' descriptions, for the times to line up
}

// step prints what is being done, runs it, and prints how it went.
func (d *demo) step(ctx context.Context, what string, fn func() error) error {
	fmt.Fprintf(d.out, "  %-*s ", d.width, what)
	start := time.Now()
	if err := fn(); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(d.out, "stopped")
		} else {
			fmt.Fprintln(d.out, "FAILED")
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	fmt.Fprintf(d.out, "%6s\n", since(start))
	return nil
}

// up builds the cluster step by step, stopping at the first failure or
// when ctx ends.
func (d *demo) up(ctx context.Context) error {
	var err error
	if d.dir, err = os.MkdirTemp("", "overlayd-demo-"); err != nil {
		return err
	}
	logDir := filepath.Join(d.dir, "controlplane")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return err
	}
	d.c, err = cluster.Prepare(cluster.Options{
		Prefix: Prefix, Nodes: d.opts.nodes, NetConf: d.netConf(), Overlayd: d.overlayd,
		PodsPerNode: d.opts.pods, CNIPods: true,
		PodName:            func(n *lab.Node, i int) string { return fmt.Sprintf("pod-%d%c", n.Index, 'a'+i) },
		ControlPlaneLogDir: logDir,
	})
	if err != nil {
		return err
	}
	steps := []struct {
		what string
		fn   func() error
	}{
		{"control plane: etcd, kube-apiserver, kube-controller-manager", func() error { return d.startControlPlane(ctx) }},
		{fmt.Sprintf("%d nodes on underlay %s (namespaces %s-*)", d.opts.nodes, d.underlay(), Prefix), d.c.StartLab},
		{"Node objects; kube-controller-manager assigns podCIDRs", func() error { return d.registerNodes(ctx) }},
		{"overlayd on every node: lease, kernel state, /readyz", func() error { return d.startAgents(ctx) }},
		{fmt.Sprintf("%d pods per node: CNI loopback, flannel -> bridge, host-local", d.opts.pods), d.c.AttachPods},
	}
	for _, s := range steps {
		d.width = max(d.width, len(s.what))
	}
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := d.step(ctx, s.what, s.fn); err != nil {
			return err
		}
	}
	return nil
}

// startControlPlane starts the control plane with Documentation/rbac.yml
// applied, and writes a kubeconfig for exploring it.
func (d *demo) startControlPlane(ctx context.Context) error {
	if err := d.c.StartControlPlane(ctx); err != nil {
		return err
	}
	return d.c.CP.WriteKubeconfig(d.adminKubeconfig(), controlplane.Admin)
}

func (d *demo) adminKubeconfig() string { return filepath.Join(d.dir, "admin.kubeconfig") }

// registerNodes creates the Node objects, as each node's kubelet would,
// and waits for the podCIDRs kube-controller-manager assigns.
func (d *demo) registerNodes(ctx context.Context) error {
	if err := d.c.RegisterNodes(ctx); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cluster.PodCIDRTimeout)
	defer cancel()
	for _, n := range d.c.Lab.Nodes {
		if _, err := d.c.WaitPodCIDR(ctx, n, cluster.PodCIDRTimeout); err != nil {
			return err
		}
	}
	return nil
}

// underlay names the lab's underlay segment in the families the demo uses.
func (d *demo) underlay() string {
	var s []string
	if d.opts.v4() {
		s = append(s, lab.Segment0.String())
	}
	if d.opts.v6() {
		s = append(s, lab.Segment0v6.String())
	}
	return strings.Join(s, " + ")
}

// netConf is the net-conf.json every node gets (in a cluster, the
// kube-overlayd ConfigMap): IPv4, dual-stack or IPv6-only.
func (d *demo) netConf() string {
	var conf string
	switch d.opts.family {
	case "dual":
		conf = fmt.Sprintf(`{"Network": %q, "EnableIPv6": true, "IPv6Network": %q, "Backend": {"Type": %q}}`, clusterCIDR, clusterCIDR6, d.opts.backend)
	case "ipv6":
		conf = fmt.Sprintf(`{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": %q, "Backend": {"Type": %q}}`, clusterCIDR6, d.opts.backend)
	default:
		conf = fmt.Sprintf(`{"Network": %q, "Backend": {"Type": %q}}`, clusterCIDR, d.opts.backend)
	}
	return conf + "\n"
}

// startAgents runs overlayd on every node as the DaemonSet would, with the
// kube-system/overlayd identity bound by Documentation/rbac.yml, and waits
// until each is ready and has published its lease.
func (d *demo) startAgents(ctx context.Context) error {
	if err := d.c.StartAgents(ctx); err != nil {
		return err
	}
	if err := d.c.WaitAgentsReady(ctx); err != nil {
		return err
	}
	return cluster.Poll(ctx, 30*time.Second, cluster.DefaultPollInterval, func() (bool, string) {
		leases, err := d.c.Leases(ctx)
		if err != nil {
			return false, err.Error()
		}
		for _, l := range leases {
			if l.BackendType != d.opts.backend ||
				(d.opts.v4() && !l.PublicIP.IsValid()) || (d.opts.v6() && !l.PublicIPv6.IsValid()) {
				return false, l.Node + " has not published its lease"
			}
		}
		return len(leases) == len(d.c.Lab.Nodes), fmt.Sprintf("%d Nodes", len(leases))
	})
}

// printLeases prints every node's lease as the API server has it; with
// IPv6, a row per node and family.
func (d *demo) printLeases(ctx context.Context) {
	podCIDR := "spec.podCIDR"
	if d.opts.v6() {
		podCIDR = "spec.podCIDRs"
	}
	fmt.Fprintf(d.out, "\nLeases (Node objects in the API server: %s and %s* annotations):\n", podCIDR, annotationPrefix)
	leases, err := d.c.Leases(ctx)
	if err != nil {
		fmt.Fprintf(d.out, "  %v\n", err)
		return
	}
	w := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	if !d.opts.v6() {
		fmt.Fprintln(w, "  NODE\tPOD CIDR\tPUBLIC IP\tBACKEND\tBACKEND DATA")
		for _, l := range leases {
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\n", l.Node, text(l.Subnet), text(l.PublicIP), l.BackendType, l.BackendData)
		}
		w.Flush()
		return
	}
	fmt.Fprintln(w, "  NODE\tFAMILY\tPOD CIDR\tPUBLIC IP\tBACKEND\tBACKEND DATA")
	for _, l := range leases {
		if d.opts.v4() {
			fmt.Fprintf(w, "  %s\tIPv4\t%s\t%s\t%s\t%s\n", l.Node, text(l.Subnet), text(l.PublicIP), l.BackendType, l.BackendData)
		}
		fmt.Fprintf(w, "  %s\tIPv6\t%s\t%s\t%s\t%s\n", l.Node, text(l.IPv6Subnet), text(l.PublicIPv6), l.BackendType, l.BackendV6Data)
	}
	w.Flush()
}

// text prints an address or prefix, and nothing for none.
func text(v interface {
	IsValid() bool
	String() string
}) string {
	if !v.IsValid() {
		return ""
	}
	return v.String()
}

// checkMatrix pings every pair of pods over IPv6 if v6, else over IPv4.
func (d *demo) checkMatrix(ctx context.Context, v6 bool) *lab.Matrix {
	return lab.CheckMatrixFamily(ctx, d.c.Pods, 30*time.Second, v6)
}

// printExplore prints commands to look around the running cluster.
func (d *demo) printExplore(hold bool) {
	if hold {
		fmt.Fprintln(d.out, "\nExplore from another shell while the cluster is up:")
	} else {
		fmt.Fprintln(d.out, "\nExplore (run `make demo` in a terminal, or with DEMO_HOLD=1, to keep the cluster up):")
	}
	from, to := d.c.Pods[0], d.c.Pods[len(d.c.Pods)-1]
	node := d.c.Lab.Nodes[0]
	var lines [][2]string
	for _, v6 := range d.opts.families() {
		label, flag := fmt.Sprintf("%s -> %s:", from.Name, to.Name), ""
		if v6 {
			flag = " -6"
			if d.opts.v4() {
				label = fmt.Sprintf("%s -> %s over IPv6:", from.Name, to.Name)
			}
		}
		lines = append(lines, [2]string{label, fmt.Sprintf("ip netns exec %s ping%s -c 3 %s", from.NS, flag, to.Addr(v6))})
	}
	for _, v6 := range d.opts.families() {
		label, flag := "overlayd's routes:", ""
		if v6 {
			flag = " -6"
			if d.opts.v4() {
				label = "its IPv6 routes:"
			}
		}
		lines = append(lines, [2]string{label, fmt.Sprintf("ip -n %s%s route show proto 79", node.NS, flag)})
	}
	switch d.opts.backend {
	case "vxlan":
		for _, v6 := range d.opts.families() {
			label, dev := "its vxlan device:", vxlan.DeviceName(1, vxlan.DefaultPort)
			if v6 {
				dev = vxlan.DeviceName6(1, vxlan.DefaultPort)
				if d.opts.v4() {
					label = "its IPv6 vxlan device:"
				}
			}
			lines = append(lines, [2]string{label, fmt.Sprintf("ip -n %s -d link show %s", node.NS, dev)})
		}
	case "udp":
		lines = append(lines, [2]string{"its tun device:", fmt.Sprintf("ip -n %s -d link show %s", node.NS, udp.DeviceName)})
	}
	lines = append(lines,
		[2]string{"the CNI plugin's input:", "cat " + node.SubnetEnv},
		[2]string{"all namespaces:", fmt.Sprintf("ip netns list | grep %s-%s-", d.c.Lab.Prefix, d.c.Lab.ID)},
		[2]string{"the API (kubectl):", fmt.Sprintf("kubectl --kubeconfig %s describe node node-1", d.adminKubeconfig())},
		[2]string{"overlayd logs:", filepath.Join(d.c.Lab.Dir, "node-*", "overlayd.log")},
		[2]string{"control plane logs:", filepath.Join(d.dir, "controlplane", "*.log")},
	)
	w := tabwriter.NewWriter(d.out, 0, 0, 1, ' ', 0)
	for _, l := range lines {
		fmt.Fprintf(w, "  %s\t%s\n", l[0], l[1])
	}
	w.Flush()
}

// printLogTails shows the end of every overlayd log, for failures.
func (d *demo) printLogTails() {
	if d.c != nil && d.c.Lab != nil {
		for _, n := range d.c.Lab.Nodes {
			if p := d.c.Agents[n.Name]; p != nil {
				fmt.Fprintf(d.out, "\n%s\n", strings.TrimSpace(p.Tail(1500)))
			}
		}
	}
	if d.dir != "" {
		fmt.Fprintf(d.out, "\ncontrol plane logs (removed on exit): %s\n", filepath.Join(d.dir, "controlplane"))
	}
}

// teardown stops every process, deletes every namespace and directory the
// demo made, then checks that nothing is left. It reports whether that
// holds.
func (d *demo) teardown() bool {
	start := time.Now()
	fmt.Fprint(d.out, "\nTearing down: ")
	var errs []error
	var namespaces []string
	var dirs []string
	processes := 0
	if d.c != nil {
		if d.c.Lab != nil {
			namespaces = d.c.Lab.NamespaceNames()
			dirs = append(dirs, d.c.Lab.Dir)
		}
		if d.c.CP != nil {
			dirs = append(dirs, d.c.CP.Dir)
			processes += 3 // etcd, kube-apiserver, kube-controller-manager
		}
		processes += len(d.c.Agents)
		if err := d.c.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if d.dir != "" {
		dirs = append(dirs, d.dir)
		if err := os.RemoveAll(d.dir); err != nil {
			errs = append(errs, err)
		}
	}
	for _, ns := range namespaces {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			errs = append(errs, fmt.Errorf("network namespace %s is still there", ns))
		}
	}
	for _, dir := range dirs {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("directory %s is still there", dir))
		}
	}
	if len(errs) > 0 {
		fmt.Fprintf(d.out, "INCOMPLETE after %s:\n", since(start))
		for _, err := range errs {
			fmt.Fprintf(d.out, "  %v\n", err)
		}
		fmt.Fprintf(d.out, "  (the next `make demo` sweeps namespaces %s-* of runs that are gone)\n", Prefix)
		return false
	}
	fmt.Fprintf(d.out, "%d namespaces, %d processes and %d directories removed in %s; nothing left.\n",
		len(namespaces), processes, len(dirs), since(start))
	return true
}
