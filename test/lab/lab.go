// Package lab builds small clusters out of network namespaces for
// overlayd's end-to-end tests, benchmarks and demo: an underlay of nodes on a
// Linux bridge, a gateway that also joins an optional second L2 segment, an
// optional external host, pods attached directly or through the real CNI
// plugins, processes started inside node namespaces, and a forwarder per
// node that makes the test control plane reachable at 127.0.0.1 from inside
// the node.
//
// The underlay is dual-stack: every host has an IPv4 address (Host.IP) and
// an IPv6 address in ULA space (Host.IP6, fd00::/8), with a default route of
// each family via its segment's gateway. Pods have the families of the
// subnets they are attached with: IPv4, IPv6 or both. Pings and the
// connectivity matrix work over ICMPv4 and ICMPv6.
//
// Every namespace is named <prefix>-<id>-<role>, where id is unique to one
// lab while it lives (a lock file held for the lab's lifetime), so parallel
// test packages never collide and a crashed run's leftovers can be told from
// a live lab's and swept. Nothing is created in the host's own network
// namespace.
//
// A typical end-to-end test:
//
//	cp := controlplane.StartT(t, controlplane.Options{})
//	l := lab.New(t, lab.Options{Prefix: "ovlE", Nodes: 3, ControlPlane: cp})
//	for _, n := range l.Nodes {
//		n.StartWithEnv("overlayd", []string{"NODE_NAME=" + n.Name}, "bin/overlayd",
//			"--kube-subnet-mgr", "--kubeconfig-file="+n.Kubeconfig, "--subnet-file="+n.SubnetEnv)
//	}
//	a, _ := l.Nodes[0].AddCNIPod("a") // once overlayd wrote subnet.env
//	b, _ := l.Nodes[1].AddCNIPod("b")
//	err := a.PingWithin(b.IP, 30*time.Second)
//	m := lab.CheckMatrix(ctx, l.Pods(), 30*time.Second) // m.Failed(), m.String()
//	m6 := lab.CheckMatrixFamily(ctx, l.Pods(), 30*time.Second, true) // over IPv6
//	p, _ := a.StartPinger(b.IP, 10*time.Millisecond)   // ... p.Stop().Lost
package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/overlayd/overlayd/test/controlplane"
)

// Addresses of the underlay. Segment 0 holds the first Options.Nodes nodes,
// segment 1 the Options.RoutedNodes nodes; the gateway joins them.
var (
	Segment0      = netip.MustParsePrefix("198.18.0.0/24")
	Segment1      = netip.MustParsePrefix("198.19.0.0/24")
	Gateway0IP    = netip.MustParseAddr("198.18.0.1")
	Gateway1IP    = netip.MustParseAddr("198.19.0.1")
	ExternalIP    = netip.MustParseAddr("198.18.0.200")
	nodeHostStart = 10 // node k (1-based) is .10+k on its segment
)

// The IPv6 underlay mirrors the IPv4 one in ULA space (fd00::/8): a host's
// IPv6 address ends in the last number of its IPv4 address, written as is
// (198.18.0.11 is fd00:198:18::11, 198.19.0.1 is fd00:198:19::1).
var (
	Segment0v6   = netip.MustParsePrefix("fd00:198:18::/64")
	Segment1v6   = netip.MustParsePrefix("fd00:198:19::/64")
	Gateway0IPv6 = netip.MustParseAddr("fd00:198:18::1")
	Gateway1IPv6 = netip.MustParseAddr("fd00:198:19::1")
	ExternalIPv6 = netip.MustParseAddr("fd00:198:18::200")
)

// UnderlayMTU is the MTU of every underlay link.
const UnderlayMTU = 1500

// DefaultAPIPort is where each node's forwarder listens inside the node.
const DefaultAPIPort = 6443

// Options describe the lab to build.
type Options struct {
	// Prefix starts every namespace name; give each test package its own
	// (letters and digits, up to 12, e.g. "ovlE"). Required.
	Prefix string
	// Nodes on segment 0 (198.18.0.0/24, fd00:198:18::/64), all on one L2
	// network.
	Nodes int
	// RoutedNodes on segment 1 (198.19.0.0/24, fd00:198:19::/64): they
	// reach segment 0 only through the gateway, so they are not on link for
	// segment-0 nodes.
	RoutedNodes int
	// ExternalHost adds a host at ExternalIP and ExternalIPv6 on segment 0
	// that is outside any cluster network, e.g. to see whether pod traffic
	// is masqueraded.
	ExternalHost bool
	// ControlPlane, when set, gets a forwarder per node and a kubeconfig
	// at Node.Kubeconfig.
	ControlPlane *controlplane.ControlPlane
	// KubeIdentity is the identity node kubeconfigs authenticate as.
	// Default "kube-system/overlayd".
	KubeIdentity string
	// APIPort is the forwarder's port on 127.0.0.1 inside each node.
	// Default DefaultAPIPort.
	APIPort int
	// PodMTU is the MTU of directly attached pods and their bridge.
	// Default 1500.
	PodMTU int
	// CNIBinDir holds bridge, host-local, loopback and flannel. Default:
	// the cni directory beside the control plane binaries
	// (hack/tools/bin/cni, `make cni-bins`).
	CNIBinDir string
	// Logf receives progress messages; New sets it to t.Logf.
	Logf func(format string, args ...any)
}

// Lab is a running set of namespaces. Close removes all of it.
type Lab struct {
	Prefix string
	ID     string // unique part of every name: <Prefix>-<ID>-...
	Dir    string // temporary directory with per-node state and logs

	Underlay *Host // holds the segment bridges
	Gateway  *Host // default gateway of every node; routes between segments
	External *Host // nil unless Options.ExternalHost
	Nodes    []*Node

	opts    Options
	lock    *os.File
	apiAddr string // host address the forwarders connect to

	mu        sync.Mutex
	hosts     []*Host // every namespace, in creation order
	pods      map[string]*Pod
	procs     []*Process
	pingers   []*Pinger
	closers   []func()
	closed    bool
	closeOnce sync.Once
	closeErr  error
}

var prefixRE = regexp.MustCompile(`^[A-Za-z0-9]{1,12}$`)

// New builds a lab for a test and removes it when the test ends, also when
// it fails or panics. On failure the tails of the processes' logs are logged.
func New(t testing.TB, opts Options) *Lab {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	l, err := Start(opts)
	if err != nil {
		t.Fatalf("building lab: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range l.Processes() {
				t.Logf("%s", p.Tail(4000))
			}
		}
		if err := l.Close(); err != nil {
			t.Errorf("closing lab: %v", err)
		}
	})
	return l
}

// Start builds a lab; the caller must Close it (e.g. `make demo`).
func Start(opts Options) (l *Lab, err error) {
	opts.Prefix = strings.TrimSuffix(opts.Prefix, "-")
	if !prefixRE.MatchString(opts.Prefix) {
		return nil, fmt.Errorf("lab: Options.Prefix %q: want 1-12 letters or digits", opts.Prefix)
	}
	if opts.Nodes < 0 || opts.RoutedNodes < 0 || opts.Nodes+opts.RoutedNodes > 100 {
		return nil, fmt.Errorf("lab: Options.Nodes=%d, RoutedNodes=%d: want 0..100 nodes in all", opts.Nodes, opts.RoutedNodes)
	}
	if opts.APIPort == 0 {
		opts.APIPort = DefaultAPIPort
	}
	if opts.APIPort < 1 || opts.APIPort > 65535 {
		return nil, fmt.Errorf("lab: Options.APIPort %d out of range", opts.APIPort)
	}
	if opts.PodMTU == 0 {
		opts.PodMTU = 1500
	}
	if opts.PodMTU < 576 || opts.PodMTU > 9000 {
		return nil, fmt.Errorf("lab: Options.PodMTU %d: want 576..9000", opts.PodMTU)
	}
	if opts.KubeIdentity == "" {
		opts.KubeIdentity = "kube-system/overlayd"
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if removed, err := Sweep(opts.Prefix); err != nil {
		opts.Logf("lab: sweeping stale namespaces: %v", err)
	} else if len(removed) > 0 {
		opts.Logf("lab: swept stale namespaces of crashed runs: %s", strings.Join(removed, " "))
	}

	start := time.Now()
	id, lock, err := reserveID(opts.Prefix)
	if err != nil {
		return nil, err
	}
	l = &Lab{Prefix: opts.Prefix, ID: id, opts: opts, lock: lock, pods: map[string]*Pod{}}
	defer func() {
		if err != nil {
			if cerr := l.Close(); cerr != nil {
				err = fmt.Errorf("%w (cleanup: %v)", err, cerr)
			}
			l = nil
		}
	}()
	if l.Dir, err = os.MkdirTemp("", l.namePrefix()); err != nil {
		return nil, fmt.Errorf("lab: creating temporary directory: %w", err)
	}
	// The lock file names the directory so Sweep can remove it after a crash.
	if err := writeLockDir(lock, l.Dir); err != nil {
		return nil, err
	}
	if opts.ControlPlane != nil {
		if l.apiAddr, err = hostPort(opts.ControlPlane.URL); err != nil {
			return nil, err
		}
	}
	if err := l.buildUnderlay(); err != nil {
		return nil, err
	}
	for k := 1; k <= opts.Nodes+opts.RoutedNodes; k++ {
		segment := 0
		if k > opts.Nodes {
			segment = 1
		}
		if err := l.addNode(k, segment); err != nil {
			return nil, err
		}
	}
	if err := l.settleUnderlay(); err != nil {
		return nil, err
	}
	opts.Logf("lab %s-%s: %d nodes (%d routed) up in %s, dir %s", l.Prefix, l.ID, len(l.Nodes), opts.RoutedNodes,
		time.Since(start).Round(time.Millisecond), l.Dir)
	return l, nil
}

// namePrefix is what every name of this lab starts with.
func (l *Lab) namePrefix() string { return l.Prefix + "-" + l.ID + "-" }

// Node returns the node with the Kubernetes name name, or nil.
func (l *Lab) Node(name string) *Node {
	for _, n := range l.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Pods returns the lab's pods sorted by name.
func (l *Lab) Pods() []*Pod {
	l.mu.Lock()
	defer l.mu.Unlock()
	pods := make([]*Pod, 0, len(l.pods))
	for _, p := range l.pods {
		if p != nil { // nil: being attached
			pods = append(pods, p)
		}
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].Name < pods[j].Name })
	return pods
}

// Processes returns every process started in the lab.
func (l *Lab) Processes() []*Process {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Process(nil), l.procs...)
}

// NamespaceNames returns the names of the lab's live network namespaces.
func (l *Lab) NamespaceNames() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var names []string
	for _, h := range l.hosts {
		if !h.deleted.Load() {
			names = append(names, h.NS)
		}
	}
	return names
}

func (l *Lab) track(h *Host) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("lab is closed")
	}
	l.hosts = append(l.hosts, h)
	return nil
}

// Close stops every process, pinger and forwarder, deletes every namespace
// (killing anything still inside), removes the temporary directory and
// releases the lab's name. It is safe to call more than once.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.close() })
	return l.closeErr
}

func (l *Lab) close() error {
	l.mu.Lock()
	l.closed = true
	procs, pingers, closers, hosts := l.procs, l.pingers, l.closers, l.hosts
	l.mu.Unlock()

	var errs []error
	for _, p := range pingers {
		p.Stop()
	}
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.stop(3 * time.Second)
		}()
	}
	wg.Wait()
	for i := len(closers) - 1; i >= 0; i-- {
		closers[i]()
	}
	// Pods first, then nodes, then the underlay, so veths go in order.
	for i := len(hosts) - 1; i >= 0; i-- {
		if err := hosts[i].delete(); err != nil {
			errs = append(errs, err)
		}
	}
	if l.Dir != "" {
		if err := os.RemoveAll(l.Dir); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", l.Dir, err))
		}
	}
	if l.lock != nil {
		releaseID(l.Prefix, l.ID, l.lock)
	}
	return errors.Join(errs...)
}

// onClose registers fn to run when the lab closes, before namespaces go.
func (l *Lab) onClose(fn func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closers = append(l.closers, fn)
}

func (l *Lab) logf(format string, args ...any) { l.opts.Logf(format, args...) }

// cniBinDir returns the directory of the CNI plugins, checking they exist.
func (l *Lab) cniBinDir() (string, error) {
	dir := l.opts.CNIBinDir
	if dir == "" {
		bins, err := controlplane.BinDir()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(bins, "cni")
	}
	for _, p := range []string{"flannel", "bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			return "", fmt.Errorf("CNI plugin %s missing in %s: run `make cni-bins`", p, dir)
		}
	}
	return dir, nil
}
