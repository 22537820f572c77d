// Package cluster is the cluster harness of overlayd's end-to-end tests,
// benchmarks and `make demo`: a real control plane (test/controlplane) with
// Documentation/rbac.yml applied, a lab of network-namespace nodes
// (test/lab), a Node object per lab node, a net-conf.json per node, the real
// overlayd binary on every node and pods. It also answers what callers ask
// of such a cluster: readiness through the node's namespace, subnet.env,
// /metrics, the leases in the API server, and polling with a deadline.
//
// The core returns errors: Start builds a whole cluster and Close removes
// it; Prepare and the step methods (StartControlPlane, StartLab,
// RegisterNodes, StartAgents, WaitAgentsReady, AttachPods) build one step at
// a time, as the demo shows them. New is the form for tests and benchmarks:
// it fails the test on error and removes everything when the test ends.
//
// A node's agent is overlayd unless Options.FlanneldNodes names it: then it
// is the real flanneld (hack/tools/flannel), run as flannel's DaemonSet runs
// it, for mixed clusters and comparisons with flanneld (UseAgent switches a
// node between the two).
//
// The cluster has the address families its net-conf.json enables: IPv4
// (Network), IPv6 (EnableIPv6, IPv6Network) or both. Node IPAM assigns a
// podCIDR of each, and pods get an address of each.
//
//	c := cluster.New(t, cluster.Options{Prefix: "ovlCH", Nodes: 2, NetConf: conf, Overlayd: bin, PodsPerNode: 1})
//	m := lab.CheckMatrix(ctx, c.Pods, 20*time.Second)
//	m6 := lab.CheckMatrixFamily(ctx, c.Pods, 20*time.Second, true) // if EnableIPv6
package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/test/controlplane"
	"github.com/overlayd/overlayd/test/lab"
)

// HealthzPort is where every agent's health server listens, on 127.0.0.1
// inside its node.
const HealthzPort = 9910

// How long the harness waits for what a cluster does on its own.
const (
	PodCIDRTimeout       = 30 * time.Second // node IPAM assigning a Node's podCIDR
	ReadyTimeout         = 60 * time.Second // an agent's /readyz answering 200
	DefaultPollInterval  = 100 * time.Millisecond
	DefaultHealthTimeout = 2 * time.Second
)

// RBACManifest is the RBAC the agents run with, relative to the repository.
const RBACManifest = "Documentation/rbac.yml"

// Options describe a cluster.
type Options struct {
	// Prefix starts the name of every network namespace (lab.Options.Prefix).
	Prefix string
	// Nodes, RoutedNodes and ExternalHost shape the lab (see lab.Options).
	Nodes        int
	RoutedNodes  int
	ExternalHost bool
	// NetConf is the net-conf.json every node starts with. The networks and
	// subnet lengths of the families it enables (Network and SubnetLen
	// unless "EnableIPv4": false; IPv6Network and IPv6SubnetLen if
	// "EnableIPv6": true) also configure node IPAM.
	NetConf string
	// AssignPodCIDRs: the harness sets each Node's spec.podCIDRs when it
	// registers it (lab node k gets the k-th subnet of each network, IPv4
	// first) and no kube-controller-manager runs, so nothing else touches
	// the Nodes. Otherwise kube-controller-manager's node IPAM assigns them,
	// as in a real cluster.
	AssignPodCIDRs bool
	// Overlayd is the binary every agent runs, but those of FlanneldNodes.
	Overlayd string
	// Args are overlayd flags after the ones every agent gets (AgentArgv).
	Args []string
	// FlanneldNodes names the nodes (lab names, "node-<k>") whose agent is
	// the real flanneld instead of overlayd.
	FlanneldNodes []string
	// Flanneld is the flanneld binary; default FlanneldBinary(), looked up
	// by Prepare when FlanneldNodes is set (else when a node first starts
	// flanneld), so a missing binary fails before anything starts.
	Flanneld string
	// FlanneldArgs are flanneld flags after the ones every flanneld gets
	// (FlanneldArgv).
	FlanneldArgs []string
	// NodeArgs are flags of one node's agent only (by node name), after
	// Args or FlanneldArgs.
	NodeArgs map[string][]string
	// PodsPerNode are attached to every node once the agents are ready.
	PodsPerNode int
	// PodName names pod i (0-based) of node n; default "<node>-p<i>".
	PodName func(n *lab.Node, i int) string
	// CNIPods attaches pods with the real CNI plugins (flannel reading the
	// subnet.env overlayd writes); otherwise directly, on the node's subnets
	// (SubnetsOf). Either way a pod gets an address of every family the
	// node's subnet.env has a subnet of.
	CNIPods bool
	// NoAgents: Start and New stop once the Nodes are registered; the
	// caller starts the agents (Up, StartAgents or StartAgent).
	NoAgents bool
	// NoWait: Up returns once the agents are started, without waiting for
	// them to be ready and without attaching pods.
	NoWait bool
	// BeforeAgent runs for each node in turn, once its Node has a podCIDR
	// of every family (podCIDR is the first, WaitPodCIDR's; WaitPodCIDRs
	// has them all) and just before its agent starts.
	BeforeAgent func(c *Cluster, n *lab.Node, podCIDR netip.Prefix) error
	// RBAC is applied as admin before anything else; default RBACManifest
	// of the repository (RepoRoot).
	RBAC []byte
	// APIServerArgs are further kube-apiserver flags
	// (controlplane.Options.APIServerArgs).
	APIServerArgs []string
	// ControlPlaneLogDir receives the control plane's logs; default inside
	// its temporary directory.
	ControlPlaneLogDir string
	// Logf receives the lab's progress messages; New defaults it to t.Logf.
	Logf func(format string, args ...any)
	// HealthTimeout bounds one request to an agent's health server;
	// default DefaultHealthTimeout.
	HealthTimeout time.Duration
	// PollInterval is how often waits check again; default DefaultPollInterval.
	PollInterval time.Duration
}

// Cluster is a control plane, a lab of nodes, an agent per node and pods.
// A field is nil until the step that makes it has run.
type Cluster struct {
	Net    *netconf.Config // Options.NetConf, parsed
	CP     *controlplane.ControlPlane
	Admin  kubernetes.Interface
	Lab    *lab.Lab
	Agents map[string]*lab.Process // the current agent, by node name
	Pods   []*lab.Pod              // in the order attached

	opts              Options
	programs          map[string]string       // node name -> Flanneld; absent: Overlayd
	agentProcs        map[string]*lab.Process // "<node>/<program>": every agent ever started
	startControlPlane func(controlplane.Options) (*controlplane.ControlPlane, error)
	startLab          func(lab.Options) (*lab.Lab, error)
}

// Prepare checks the options, fills in defaults and reads the RBAC
// manifest; it starts nothing. The step methods build the cluster.
func Prepare(opts Options) (*Cluster, error) {
	if opts.Prefix == "" {
		return nil, errors.New("cluster: Options.Prefix is required")
	}
	// Parse, not the daemon's Load: the harness runs whatever the file
	// describes, also what this build of overlayd refuses.
	netConf, err := netconf.Parse([]byte(opts.NetConf))
	if err != nil {
		return nil, fmt.Errorf("cluster: Options.NetConf: %w", err)
	}
	if opts.RBAC == nil {
		root, err := RepoRoot()
		if err != nil {
			return nil, err
		}
		if opts.RBAC, err = os.ReadFile(filepath.Join(root, RBACManifest)); err != nil {
			return nil, fmt.Errorf("cluster: reading the RBAC manifest: %w", err)
		}
	}
	if opts.PodName == nil {
		opts.PodName = func(n *lab.Node, i int) string { return fmt.Sprintf("%s-p%d", n.Name, i) }
	}
	if opts.HealthTimeout == 0 {
		opts.HealthTimeout = DefaultHealthTimeout
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if len(opts.FlanneldNodes) > 0 && opts.Flanneld == "" {
		// Before anything starts: a missing binary is the test's failure.
		if opts.Flanneld, err = FlanneldBinary(); err != nil {
			return nil, err
		}
	}
	programs := map[string]string{}
	for _, name := range opts.FlanneldNodes {
		programs[name] = Flanneld
	}
	return &Cluster{
		Net:               netConf,
		Agents:            map[string]*lab.Process{},
		opts:              opts,
		programs:          programs,
		agentProcs:        map[string]*lab.Process{},
		startControlPlane: controlplane.Start,
		startLab:          lab.Start,
	}, nil
}

// Start builds a whole cluster: control plane, RBAC, lab, Nodes and, unless
// Options.NoAgents, agents and pods (Up). The caller must Close it; on
// error, what was built is already removed.
func Start(ctx context.Context, opts Options) (c *Cluster, err error) {
	if c, err = Prepare(opts); err != nil {
		return nil, err
	}
	if err := c.build(ctx); err != nil {
		if cerr := c.Close(); cerr != nil {
			err = fmt.Errorf("%w (cleanup: %v)", err, cerr)
		}
		return nil, err
	}
	return c, nil
}

func (c *Cluster) build(ctx context.Context) error {
	if err := c.StartControlPlane(ctx); err != nil {
		return err
	}
	if err := c.StartLab(); err != nil {
		return err
	}
	if err := c.RegisterNodes(ctx); err != nil {
		return err
	}
	if c.opts.NoAgents {
		return nil
	}
	return c.Up(ctx)
}

// StartControlPlane starts etcd and kube-apiserver, and unless
// Options.AssignPodCIDRs kube-controller-manager with node IPAM over the
// networks of Options.NetConf (IPv4 first), then applies the RBAC manifest.
func (c *Cluster) StartControlPlane(ctx context.Context) error {
	cpOpts := controlplane.Options{LogDir: c.opts.ControlPlaneLogDir, APIServerArgs: c.opts.APIServerArgs}
	if !c.opts.AssignPodCIDRs {
		var networks []string
		for _, n := range c.networks() {
			networks = append(networks, n.String())
		}
		cpOpts.ControllerManager = true
		cpOpts.ClusterCIDR = strings.Join(networks, ",")
		cpOpts.NodeCIDRMaskSize, cpOpts.NodeCIDRMaskSizeIPv6 = c.Net.SubnetLen, c.Net.IPv6SubnetLen
	}
	cp, err := c.startControlPlane(cpOpts)
	if err != nil {
		return fmt.Errorf("starting the control plane: %w", err)
	}
	c.CP = cp
	if c.Admin, err = kubernetes.NewForConfig(cp.Config(controlplane.Admin)); err != nil {
		return fmt.Errorf("admin client: %w", err)
	}
	if _, err := cp.Apply(ctx, controlplane.Admin, c.opts.RBAC, controlplane.ApplyOptions{}); err != nil {
		return fmt.Errorf("applying %s: %w", RBACManifest, err)
	}
	return nil
}

// StartLab builds the network namespaces: underlay, gateway, nodes.
func (c *Cluster) StartLab() error {
	l, err := c.startLab(lab.Options{
		Prefix: c.opts.Prefix, Nodes: c.opts.Nodes, RoutedNodes: c.opts.RoutedNodes,
		ExternalHost: c.opts.ExternalHost, ControlPlane: c.CP, Logf: c.opts.Logf,
	})
	if err != nil {
		return err
	}
	c.Lab = l
	for _, name := range c.opts.FlanneldNodes {
		if l.Node(name) == nil {
			return fmt.Errorf("cluster: Options.FlanneldNodes: no node %q in the lab", name)
		}
	}
	return nil
}

// RegisterNodes creates the Node object of every lab node, as its kubelet
// would (with the labels and the annotation a kubelet registers with:
// flanneld expects a Node to have annotations), and gives the node its
// net-conf.json, as the ConfigMap volume would.
func (c *Cluster) RegisterNodes(ctx context.Context) error {
	for _, n := range c.Lab.Nodes {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name: n.Name,
			Labels: map[string]string{
				"kubernetes.io/hostname": n.Name, "kubernetes.io/os": "linux", "kubernetes.io/arch": runtime.GOARCH,
			},
			Annotations: map[string]string{"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
		}}
		if c.opts.AssignPodCIDRs {
			cidrs, err := c.AssignedPodCIDRs(n)
			if err != nil {
				return err
			}
			for _, cidr := range cidrs.List() {
				node.Spec.PodCIDRs = append(node.Spec.PodCIDRs, cidr.String())
			}
			node.Spec.PodCIDR = node.Spec.PodCIDRs[0]
		}
		if _, err := c.Admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("creating Node %s: %w", n.Name, err)
		}
		if err := c.WriteNetConf(n, c.opts.NetConf); err != nil {
			return err
		}
	}
	return nil
}

// networks are the networks of the families Options.NetConf enables, IPv4
// first.
func (c *Cluster) networks() []netip.Prefix {
	var out []netip.Prefix
	if c.Net.EnableIPv4 {
		out = append(out, c.Net.Network)
	}
	if c.Net.EnableIPv6 {
		out = append(out, c.Net.IPv6Network)
	}
	return out
}

// AssignedPodCIDRs are the podCIDRs Options.AssignPodCIDRs gives lab node
// n: the n.Index-th subnet of each network of Options.NetConf (index 0
// stays free, as node IPAM leaves it).
func (c *Cluster) AssignedPodCIDRs(n *lab.Node) (Subnets, error) {
	var s Subnets
	var err error
	if c.Net.EnableIPv4 {
		if s.IPv4, err = ip.NthSubnet(c.Net.Network, c.Net.SubnetLen, uint64(n.Index)); err != nil {
			return s, fmt.Errorf("IPv4 pod CIDR of %s: %w", n.Name, err)
		}
	}
	if c.Net.EnableIPv6 {
		if s.IPv6, err = ip.NthSubnet(c.Net.IPv6Network, c.Net.IPv6SubnetLen, uint64(n.Index)); err != nil {
			return s, fmt.Errorf("IPv6 pod CIDR of %s: %w", n.Name, err)
		}
	}
	return s, nil
}

// WaitPodCIDRs waits until the node's Node object has a podCIDR of every
// family Options.NetConf enables and returns them.
func (c *Cluster) WaitPodCIDRs(ctx context.Context, n *lab.Node, timeout time.Duration) (Subnets, error) {
	var cidrs Subnets
	var bad error
	err := Poll(ctx, timeout, c.opts.PollInterval, func() (bool, string) {
		node, err := c.Admin.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		if cidrs, bad = parsePodCIDRs(node.Spec.PodCIDRs); bad != nil {
			return true, "" // the API server validates podCIDRs: waiting changes nothing
		}
		if missing := cidrs.missing(c.Net); missing != "" {
			return false, fmt.Sprintf("no %s podCIDR yet (podCIDRs %q)", missing, node.Spec.PodCIDRs)
		}
		return true, ""
	})
	if err == nil {
		err = bad
	}
	if err != nil {
		return cidrs, fmt.Errorf("podCIDRs of %s: %w", n.Name, err)
	}
	return cidrs, nil
}

// WaitPodCIDR is WaitPodCIDRs, returning the node's first podCIDR
// (spec.podCIDR): the IPv4 one, or the IPv6 one in an IPv6-only cluster.
func (c *Cluster) WaitPodCIDR(ctx context.Context, n *lab.Node, timeout time.Duration) (netip.Prefix, error) {
	cidrs, err := c.WaitPodCIDRs(ctx, n, timeout)
	if err != nil {
		return netip.Prefix{}, err
	}
	return cidrs.List()[0], nil
}

// NetConfPath is the node's net-conf.json.
func (c *Cluster) NetConfPath(n *lab.Node) string { return filepath.Join(n.Dir, "net-conf.json") }

// WriteNetConf replaces the node's net-conf.json atomically, the way a
// ConfigMap volume update does.
func (c *Cluster) WriteNetConf(n *lab.Node, conf string) error {
	tmp := c.NetConfPath(n) + ".tmp"
	if err := os.WriteFile(tmp, []byte(conf), 0o644); err != nil {
		return fmt.Errorf("net-conf.json of %s: %w", n.Name, err)
	}
	if err := os.Rename(tmp, c.NetConfPath(n)); err != nil {
		return fmt.Errorf("net-conf.json of %s: %w", n.Name, err)
	}
	return nil
}

// Up starts every agent (StartAgents) and, unless Options.NoWait, waits
// until each is ready and attaches the pods.
func (c *Cluster) Up(ctx context.Context) error {
	if err := c.StartAgents(ctx); err != nil {
		return err
	}
	if c.opts.NoWait {
		return nil
	}
	if err := c.WaitAgentsReady(ctx); err != nil {
		return err
	}
	return c.AttachPods()
}

// StartAgents starts the agent of every node in turn, running
// Options.BeforeAgent first. flanneld nodes wait for their podCIDR first
// (StartAgent).
func (c *Cluster) StartAgents(ctx context.Context) error {
	for _, n := range c.Lab.Nodes {
		if c.opts.BeforeAgent != nil {
			cidr, err := c.WaitPodCIDR(ctx, n, PodCIDRTimeout)
			if err != nil {
				return err
			}
			if err := c.opts.BeforeAgent(c, n, cidr); err != nil {
				return fmt.Errorf("before the agent on %s: %w", n.Name, err)
			}
		}
		if _, err := c.StartAgent(n); err != nil {
			return err
		}
	}
	return nil
}

// WaitAgentsReady waits until every node's agent is ready, each within
// ReadyTimeout.
func (c *Cluster) WaitAgentsReady(ctx context.Context) error {
	for _, n := range c.Lab.Nodes {
		if _, err := c.WaitReady(ctx, n, ReadyTimeout); err != nil {
			return err
		}
	}
	return nil
}

// AttachPods attaches Options.PodsPerNode pods to every node.
func (c *Cluster) AttachPods() error {
	for _, n := range c.Lab.Nodes {
		for i := range c.opts.PodsPerNode {
			if _, err := c.AddPod(n, c.opts.PodName(n, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// AddPod attaches a pod to the node, with the CNI plugins if
// Options.CNIPods, else directly on the subnets in the node's subnet.env;
// either way with an address of every family it has a subnet of.
func (c *Cluster) AddPod(n *lab.Node, name string) (*lab.Pod, error) {
	var p *lab.Pod
	var err error
	if c.opts.CNIPods {
		p, err = n.AddCNIPod(name)
	} else {
		var subs Subnets
		if subs, err = SubnetsOf(n); err == nil {
			p, err = n.AddPod(name, subs.List()...)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("adding pod %s: %w", name, err)
	}
	c.Pods = append(c.Pods, p)
	return p, nil
}

// PodsOn returns the pods of a node, in the order attached.
func (c *Cluster) PodsOn(n *lab.Node) []*lab.Pod {
	var out []*lab.Pod
	for _, p := range c.Pods {
		if p.Node == n {
			out = append(out, p)
		}
	}
	return out
}

// Close stops every agent, removes the lab's namespaces and stops the
// control plane. It may be called at any point, more than once.
func (c *Cluster) Close() error {
	var err error
	if c.Lab != nil {
		err = c.Lab.Close()
	}
	if c.CP != nil {
		c.CP.Stop()
	}
	return err
}
