// Package nodes is the lab with real nodes: a control plane with
// kube-controller-manager and kube-scheduler, and nodes each running a real
// kubelet and containerd (with runc), so that what the shipped manifests
// and the Helm chart deploy runs as it does in a cluster: the kubelet pulls
// nothing (images are built here and imported), starts the DaemonSet's
// init containers and containers, mounts its ConfigMap and service
// account token, probes it, and attaches ordinary pods through the CNI
// configuration the DaemonSet installs.
//
// Each node is a network namespace of test/lab (underlay address, default
// route, a forwarder to the API server) with mount, PID and UTS namespaces
// of its own, held by an init process (init.go): the kubelet's and
// containerd's fixed paths (/var/lib/kubelet, /var/log/pods, /run, the CNI
// directories...) are the node's own and never appear on the host; hostPID
// pods see the node's processes. The kubelet's pods get a cgroup root of
// the node's own. The API server reaches kubelets (logs, exec) through an
// egress proxy that dials inside the lab (egress.go); pods reach the API
// server at the kubernetes Service's address, forwarded on every node
// (there is no kube-proxy).
//
// Close removes every process, mount (with the namespaces), cgroup and
// network namespace, also when the start failed; Start sweeps what a
// crashed run left. Binaries: kubelet, kube-scheduler and kubectl from
// hack/tools (`make test-bins`), containerd, runc and the images' Debian
// packages from `make node-deps`.
//
//	c := nodes.New(t, nodes.Options{Prefix: "ovlN", Nodes: 3})
//	c.Kubectl(ctx, "apply", "-f", "Documentation/kube-overlayd.yml")
package nodes

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/controlplane"
	"github.com/overlayd/overlayd/test/lab"
)

// Options describe a cluster of real nodes.
type Options struct {
	// Prefix names the lab's network namespaces and the nodes' cgroup
	// roots (lab.Options.Prefix). Required.
	Prefix string
	// Nodes is how many kubelet nodes (1 to 9).
	Nodes int
	// ClusterCIDR is kube-controller-manager's --cluster-cidr, the
	// network it gives nodes /24 podCIDRs from: net-conf.json's Network.
	// Default 10.244.0.0/16.
	ClusterCIDR string
	// Overlayd is the binary the overlayd image holds; default: built from
	// this tree as the Dockerfile builds it (BuildOverlayd).
	Overlayd string
	// OverlaydImages are the names the overlayd image is imported under;
	// default DefaultOverlaydImage. Name the image a manifest refers to
	// so that it runs unchanged.
	OverlaydImages []string
	// Dir holds the cluster's files (logs, kubeconfig, node roots); default
	// a new temporary directory. It is removed on Close unless KeepDir.
	Dir     string
	KeepDir bool
	// Logf receives progress messages.
	Logf func(format string, args ...any)
}

// Cluster is a control plane and kubelet nodes.
type Cluster struct {
	CP    *controlplane.ControlPlane
	Lab   *lab.Lab
	Nodes []*Node
	Admin kubernetes.Interface
	// Kubeconfig is an admin kubeconfig for kubectl and helm on the host.
	Kubeconfig string
	Dir        string

	opts   Options
	bins   string
	egress *egressProxy
	// dirLock is held while the cluster lives (a temporary Dir only).
	dirLock *os.File
	once    sync.Once
	err     error
}

// How long Start waits for what the nodes do on their own.
const (
	NodeRegisterTimeout = 60 * time.Second
)

var nodeBinaries = []string{"kubelet", "kubectl", "kube-scheduler", "node/bin/containerd", "node/bin/runc", "node/bin/ctr",
	"node/bin/containerd-shim-runc-v2", "node/pause"}

// Start brings a cluster up; the caller must Close it. On error, what was
// built is already removed.
func Start(ctx context.Context, opts Options) (c *Cluster, err error) {
	if opts.Prefix == "" {
		return nil, errors.New("nodes: Options.Prefix is required")
	}
	if opts.Nodes < 1 || opts.Nodes > 9 {
		return nil, fmt.Errorf("nodes: Options.Nodes %d: want 1 to 9", opts.Nodes)
	}
	if opts.ClusterCIDR == "" {
		opts.ClusterCIDR = "10.244.0.0/16"
	}
	if len(opts.OverlaydImages) == 0 {
		opts.OverlaydImages = []string{DefaultOverlaydImage}
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	bins, err := binDir()
	if err != nil {
		return nil, err
	}
	for _, b := range nodeBinaries {
		if _, err := os.Stat(filepath.Join(bins, b)); err != nil {
			return nil, fmt.Errorf("nodes: %s missing in %s: run `make test-bins node-deps`", b, bins)
		}
	}
	if removed, err := Sweep(opts.Prefix); err != nil {
		opts.Logf("nodes: sweeping a crashed run's leftovers: %v", err)
	} else if len(removed) > 0 {
		opts.Logf("nodes: swept a crashed run's leftovers: %s", strings.Join(removed, " "))
	}

	c = &Cluster{opts: opts, bins: bins, Dir: opts.Dir}
	defer func() {
		if err != nil {
			if cerr := c.Close(); cerr != nil {
				err = fmt.Errorf("%w (cleanup: %v)", err, cerr)
			}
			c = nil
		}
	}()
	start := time.Now()
	if c.Dir == "" {
		if c.Dir, err = os.MkdirTemp("", tempDirPattern(opts.Prefix)); err != nil {
			return nil, err
		}
		if c.dirLock, err = lockDir(c.Dir); err != nil {
			return nil, err
		}
	} else if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, err
	}
	if c.egress, err = startEgressProxy(filepath.Join(c.Dir, "egress.sock")); err != nil {
		return nil, err
	}
	overlayd := opts.Overlayd
	if overlayd == "" {
		if overlayd, err = BuildOverlayd(c.Dir); err != nil {
			return nil, err
		}
	}
	archive, err := buildImages(c.Dir, overlayd, opts.OverlaydImages)
	if err != nil {
		return nil, err
	}

	var names []string
	for k := 1; k <= opts.Nodes; k++ {
		names = append(names, fmt.Sprintf("node-%d", k)) // the lab's names
	}
	if c.CP, err = controlplane.Start(controlplane.Options{
		Workloads: true, Nodes: names, ClusterEgress: c.egress.socket,
		ClusterCIDR: opts.ClusterCIDR, NodeCIDRMaskSize: 24, LogDir: c.Dir, TempDir: c.Dir,
	}); err != nil {
		return nil, fmt.Errorf("starting the control plane: %w", err)
	}
	if c.Admin, err = kubernetes.NewForConfig(c.CP.Config(controlplane.Admin)); err != nil {
		return nil, err
	}
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	if err := c.CP.WriteKubeconfig(c.Kubeconfig, controlplane.Admin); err != nil {
		return nil, err
	}
	if c.Lab, err = lab.Start(lab.Options{Prefix: opts.Prefix, Nodes: opts.Nodes, ControlPlane: c.CP, Logf: opts.Logf}); err != nil {
		return nil, err
	}
	c.egress.route(c.Lab.Gateway.Dial)

	for _, ln := range c.Lab.Nodes {
		c.Nodes = append(c.Nodes, &Node{Node: ln, Root: filepath.Join(ln.Dir, "root"),
			CgroupRoot: "/" + c.Lab.Prefix + "-" + c.Lab.ID + "-" + ln.Name})
	}
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for i, n := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.startNode(ctx, n, archive)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if err := c.waitRegistered(ctx); err != nil {
		return nil, err
	}
	opts.Logf("nodes: control plane and %d kubelet nodes up in %s (dir %s)", len(c.Nodes), time.Since(start).Round(time.Millisecond), c.Dir)
	return c, nil
}

func (c *Cluster) startNode(ctx context.Context, n *Node, archive string) error {
	if err := createCgroupRoot(n.CgroupRoot); err != nil {
		return err
	}
	if err := n.serviceVIP(); err != nil {
		return err
	}
	n.KubeletKubeconfig = filepath.Join(n.Dir, "kubelet.kubeconfig")
	if err := n.WriteKubeconfig(n.KubeletKubeconfig, controlplane.NodeIdentity(n.Name)); err != nil {
		return err
	}
	if err := n.startInit(ctx); err != nil {
		return err
	}
	bins := filepath.Join(c.bins, "node", "bin")
	if err := n.startRuntime(ctx, bins); err != nil {
		return err
	}
	if err := n.importImages(ctx, bins, archive); err != nil {
		return err
	}
	return n.startKubelet(c.bins, c.CP.CAFile)
}

// waitRegistered waits until every kubelet has registered its Node and
// node IPAM has given it a podCIDR.
func (c *Cluster) waitRegistered(ctx context.Context) error {
	for _, n := range c.Nodes {
		err := cluster.Poll(ctx, NodeRegisterTimeout, 100*time.Millisecond, func() (bool, string) {
			if !n.kubelet.running() {
				return false, "kubelet exited"
			}
			node, err := c.Admin.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			return node.Spec.PodCIDR != "", "no podCIDR yet"
		})
		if err != nil {
			return fmt.Errorf("node %s registering: %w\n%s", n.Name, err, n.kubelet.tail(3000))
		}
	}
	return nil
}

// Node returns the node named name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Logs are the tails of the nodes' and control plane's logs, for failures.
func (c *Cluster) Logs(n int) string {
	var b strings.Builder
	for _, node := range c.Nodes {
		for _, p := range []*proc{node.init, node.containerd, node.kubelet} {
			if p != nil {
				b.WriteString(p.tail(n) + "\n")
			}
		}
	}
	return b.String()
}

// Close stops every node (and with its init everything in it), removes the
// nodes' cgroups and the lab's namespaces, and stops the control plane.
// It may be called at any point, more than once.
func (c *Cluster) Close() error {
	c.once.Do(func() { c.err = c.close() })
	return c.err
}

func (c *Cluster) close() error {
	var errs []error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := n.stop()
			if cerr := removeCgroupRoot(n.CgroupRoot); cerr != nil {
				err = errors.Join(err, cerr)
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if c.Lab != nil {
		if err := c.Lab.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.CP != nil {
		c.CP.Stop()
	}
	if c.egress != nil {
		c.egress.close()
	}
	if c.Dir != "" && !c.opts.KeepDir {
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	if c.dirLock != nil {
		c.dirLock.Close()
	}
	return errors.Join(errs...)
}

// Sweep removes what a crashed run with this prefix left: the lab's
// namespaces (and the processes in them, kubelets and containerds among
// them), the nodes' cgroup roots (and what still runs in them) whose lab
// is gone, and the clusters' temporary directories nobody holds. Live
// clusters are left alone. (A crashed run's node processes are already
// gone: they die with the process that started them.)
func Sweep(prefix string) ([]string, error) {
	removed, err := lab.Sweep(prefix)
	dirs, derr := sweepDirs(prefix)
	removed, err = append(removed, dirs...), errors.Join(err, derr)
	hs, herr := cgroupHierarchies()
	if herr != nil {
		return removed, errors.Join(err, herr)
	}
	re := regexp.MustCompile(`^(` + regexp.QuoteMeta(prefix) + `-[0-9a-f]{6}-)node-[0-9]+$`)
	live := map[string]bool{}
	netnses, _ := os.ReadDir("/run/netns")
	stale := map[string]bool{}
	for _, h := range hs {
		entries, _ := os.ReadDir(h)
		for _, e := range entries {
			m := re.FindStringSubmatch(e.Name())
			if m == nil {
				continue
			}
			if _, seen := live[m[1]]; !seen {
				live[m[1]] = false
				for _, ns := range netnses {
					if strings.HasPrefix(ns.Name(), m[1]) {
						live[m[1]] = true
					}
				}
			}
			if !live[m[1]] {
				stale[e.Name()] = true
			}
		}
	}
	for name := range stale {
		if cerr := removeCgroupRoot(name); cerr != nil {
			err = errors.Join(err, cerr)
		}
		removed = append(removed, "cgroup:"+name)
	}
	return removed, err
}

func binDir() (string, error) { return controlplane.BinDir() }
