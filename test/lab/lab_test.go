package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/overlayd/overlayd/test/controlplane"
)

// testPrefix names every namespace these tests create.
const testPrefix = "ovlE"

// helperEnv makes the test binary act as a small program instead of
// running tests; see TestMain.
const helperEnv = "LAB_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "kube-client":
		os.Exit(helperKubeClient())
	case "crash":
		os.Exit(helperCrash())
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", helperEnv, os.Getenv(helperEnv))
		os.Exit(2)
	}
}

// podSubnet is node k's pod subnet in these tests.
func podSubnet(k int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(k), 0}), 24)
}

// routePodSubnets installs, in every node, a route to every other node's
// pod subnet (subnetOf its index) via that node's underlay address of the
// subnet's family: what host-gw would do, set by the test instead of
// overlayd.
func routePodSubnets(t *testing.T, nodes []*Node, subnetOf func(k int) netip.Prefix) {
	t.Helper()
	for _, n := range nodes {
		for _, peer := range nodes {
			if peer == n {
				continue
			}
			sub := subnetOf(peer.Index)
			if err := n.AddRoute(sub, peer.Addr(sub.Addr().Is6())); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func netnsList(t *testing.T) string {
	t.Helper()
	out, err := exec.Command(ipBinary(), "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	return string(out)
}

// TestUnderlayNodes checks what a node looks like: eth0 up with its
// underlay address and MTU 1500, a default route via the gateway, a
// Kubernetes-valid name, and its own namespace name under the lab's id.
func TestUnderlayNodes(t *testing.T) {
	l := New(t, Options{Prefix: testPrefix, Nodes: 2})
	if len(l.Nodes) != 2 {
		t.Fatalf("%d nodes, want 2", len(l.Nodes))
	}
	for i, n := range l.Nodes {
		wantIP := netip.AddrFrom4([4]byte{198, 18, 0, byte(11 + i)})
		if n.IP != wantIP || n.Name != fmt.Sprintf("node-%d", i+1) || !podNameRE.MatchString(n.Name) {
			t.Errorf("node %d: name %q ip %s, want node-%d %s", i, n.Name, n.IP, i+1, wantIP)
		}
		if !strings.HasPrefix(n.NS, testPrefix+"-"+l.ID+"-") {
			t.Errorf("node namespace %q does not start with %s-%s-", n.NS, testPrefix, l.ID)
		}
		nl, err := n.Netlink()
		if err != nil {
			t.Fatal(err)
		}
		eth0, err := nl.LinkByName("eth0")
		if err != nil {
			t.Fatalf("%s: eth0: %v", n.Name, err)
		}
		if eth0.Attrs().MTU != UnderlayMTU || eth0.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("%s: eth0 mtu %d flags %v", n.Name, eth0.Attrs().MTU, eth0.Attrs().Flags)
		}
		addrs, _ := nl.AddrList(eth0, netlink.FAMILY_V4)
		if len(addrs) != 1 || addrs[0].IPNet.String() != wantIP.String()+"/24" {
			t.Errorf("%s: eth0 addresses %v, want %s/24", n.Name, addrs, wantIP)
		}
		routes, err := nl.RouteGet(net.ParseIP("192.0.2.1"))
		if err != nil || len(routes) == 0 || !routes[0].Gw.Equal(net.IP(Gateway0IP.AsSlice())) {
			t.Errorf("%s: route to 192.0.2.1: %v %v, want via %s", n.Name, routes, err, Gateway0IP)
		}
		nl.Close()
	}
	if err := l.Nodes[0].PingWithin(l.Nodes[1].IP, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestRoutedSegmentAndExternalHost: a node on the second segment is
// reached through the gateway (not on link), the external host on link.
func TestRoutedSegmentAndExternalHost(t *testing.T) {
	l := New(t, Options{Prefix: testPrefix, Nodes: 1, RoutedNodes: 1, ExternalHost: true})
	near, far := l.Nodes[0], l.Nodes[1]
	if far.Segment != 1 || !Segment1.Contains(far.IP) || far.Gateway != Gateway1IP {
		t.Fatalf("routed node: segment %d ip %s gateway %s", far.Segment, far.IP, far.Gateway)
	}
	nl, err := near.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	viaFar, err := nl.RouteGet(net.IP(far.IP.AsSlice()))
	if err != nil || len(viaFar) == 0 || !viaFar[0].Gw.Equal(net.IP(Gateway0IP.AsSlice())) {
		t.Errorf("route %s -> %s: %v %v, want via the gateway %s", near.Name, far.IP, viaFar, err, Gateway0IP)
	}
	viaExt, err := nl.RouteGet(net.IP(ExternalIP.AsSlice()))
	if err != nil || len(viaExt) == 0 || viaExt[0].Gw != nil {
		t.Errorf("route %s -> external %s: %v %v, want on link", near.Name, ExternalIP, viaExt, err)
	}
	for _, c := range []struct {
		from *Host
		to   netip.Addr
	}{{&near.Host, far.IP}, {&far.Host, near.IP}, {&near.Host, ExternalIP}, {&far.Host, ExternalIP}, {l.External, near.IP}} {
		if err := c.from.PingWithin(c.to, 10*time.Second); err != nil {
			t.Error(err)
		}
	}
}

// TestDirectPodsMatrix: three nodes with two directly attached pods each;
// without routes between nodes only pods on the same node reach each
// other; with static routes every pair does.
func TestDirectPodsMatrix(t *testing.T) {
	l := New(t, Options{Prefix: testPrefix, Nodes: 3})
	var pods []*Pod
	for _, n := range l.Nodes {
		for _, suffix := range []string{"a", "b"} {
			p, err := n.AddPod(fmt.Sprintf("p%d%s", n.Index, suffix), podSubnet(n.Index))
			if err != nil {
				t.Fatal(err)
			}
			if !podSubnet(n.Index).Contains(p.IP) || p.Gateway != netip.AddrFrom4([4]byte{10, 244, byte(n.Index), 1}) {
				t.Fatalf("pod %s: ip %s gateway %s", p.Name, p.IP, p.Gateway)
			}
			pods = append(pods, p)
		}
	}
	if pods[0].IP == pods[1].IP {
		t.Fatalf("two pods got %s", pods[0].IP)
	}
	if _, err := l.Nodes[0].AddPod("other-subnet", podSubnet(9)); err == nil {
		t.Fatal("a second subnet on one node was accepted")
	}

	// The matrix must be able to fail: before routes, only same-node pairs work.
	before := CheckMatrix(context.Background(), pods, 1500*time.Millisecond)
	for _, f := range before.Failed() {
		if f.From.Node == f.To.Node {
			t.Errorf("same-node pair failed: %v", f)
		}
	}
	if got, want := len(before.Failed()), len(pods)*(len(pods)-2); got != want {
		t.Fatalf("before routes: %d failing pairs, want %d (all cross-node)\n%s", got, want, before)
	}

	routePodSubnets(t, l.Nodes, podSubnet)
	after := CheckMatrix(context.Background(), pods, 20*time.Second)
	if !after.OK() {
		t.Fatalf("after routes, failing pairs: %v\n%s", after.Failed(), after)
	}
	t.Logf("connectivity matrix:\n%s", after)

	// A removed pod is gone and no longer answers.
	if err := pods[5].Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(pods[5].Path()); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("namespace of removed pod: %v", err)
	}
	if err := pods[0].PingWithin(pods[5].IP, 500*time.Millisecond); err == nil {
		t.Fatal("removed pod still answers")
	}
}

// addCNIPods attaches two pods to every node with the real CNI plugins.
func addCNIPods(t *testing.T, l *Lab) []*Pod {
	t.Helper()
	var pods []*Pod
	for _, n := range l.Nodes {
		for _, suffix := range []string{"a", "b"} {
			p, err := n.AddCNIPod(fmt.Sprintf("c%d%s", n.Index, suffix))
			if err != nil {
				t.Fatal(err)
			}
			pods = append(pods, p)
		}
	}
	return pods
}

// TestCNIPods attaches pods through the real flannel -> bridge ->
// host-local plugins with a hand-written subnet.env per node.
func TestCNIPods(t *testing.T) {
	l := New(t, Options{Prefix: testPrefix, Nodes: 2})
	for _, n := range l.Nodes {
		env := fmt.Sprintf("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.%d.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", n.Index)
		if err := os.WriteFile(n.SubnetEnv, []byte(env), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pods := addCNIPods(t, l)
	for _, p := range pods {
		n := p.Node
		wantGW := netip.AddrFrom4([4]byte{10, 244, byte(n.Index), 1})
		if p.Subnet != podSubnet(n.Index) || !p.Subnet.Contains(p.IP) || p.Gateway != wantGW {
			t.Errorf("pod %s on %s: ip %s subnet %s gateway %s; want in %s via %s", p.Name, n.Name, p.IP, p.Subnet, p.Gateway, podSubnet(n.Index), wantGW)
		}
		// host-local recorded the address in this node's own data dir.
		owner, err := os.ReadFile(filepath.Join(n.IPAMDataDir(), CNINetworkName, p.IP.String()))
		if err != nil || !strings.Contains(string(owner), p.ContainerID) {
			t.Errorf("host-local record of %s: %q %v", p.IP, owner, err)
		}
		if _, err := os.Stat(filepath.Join(n.FlannelDataDir(), p.ContainerID)); err != nil {
			t.Errorf("flannel plugin state of %s: %v", p.Name, err)
		}
		if _, err := os.Stat(filepath.Join("/var/lib/cni/flannel", p.ContainerID)); err == nil {
			t.Errorf("flannel plugin wrote to its default data dir for %s", p.Name)
		}
		// The pod's eth0 has the MTU from subnet.env and flannel's route to
		// the whole network via the bridge.
		nl, err := p.Netlink()
		if err != nil {
			t.Fatal(err)
		}
		eth0, err := nl.LinkByName("eth0")
		if err != nil || eth0.Attrs().MTU != 1450 {
			t.Errorf("pod %s eth0: %v, want mtu 1450", p.Name, err)
		}
		r, err := nl.RouteGet(net.ParseIP("10.244.200.9"))
		if err != nil || len(r) == 0 || !r[0].Gw.Equal(net.IP(wantGW.AsSlice())) {
			t.Errorf("pod %s: route into the cluster network: %v %v, want via %s", p.Name, r, err, wantGW)
		}
		lo, err := nl.LinkByName("lo")
		if err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("pod %s: lo not up: %v", p.Name, err)
		}
		nl.Close()
		if err := p.PingWithin(p.Gateway, 10*time.Second); err != nil {
			t.Errorf("pod %s to its bridge: %v", p.Name, err)
		}
	}
	if pods[0].IP == pods[1].IP {
		t.Fatalf("host-local gave %s twice", pods[0].IP)
	}
	if t.Failed() {
		return
	}

	routePodSubnets(t, l.Nodes, podSubnet)
	if m := CheckMatrix(context.Background(), pods, 20*time.Second); !m.OK() {
		t.Fatalf("CNI pods, failing pairs: %v\n%s", m.Failed(), m)
	}

	// CNI DEL releases the address and the plugin state.
	gone := pods[1]
	if err := gone.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(gone.Node.IPAMDataDir(), CNINetworkName, gone.IP.String())); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("host-local still holds %s after DEL: %v", gone.IP, err)
	}
	if _, err := os.Stat(filepath.Join(gone.Node.FlannelDataDir(), gone.ContainerID)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("flannel state of %s after DEL: %v", gone.Name, err)
	}
	if _, err := l.Nodes[0].AddPod("direct-on-cni-node", podSubnet(1)); err == nil {
		t.Error("a direct pod on a CNI node was accepted")
	}
}

// TestAPIForwarder: a separate program started inside a node namespace
// reaches the real API server through the node's kubeconfig, with TLS
// verified against the control plane's CA; so does an in-process client
// dialing from the node.
func TestAPIForwarder(t *testing.T) {
	cp := controlplane.StartT(t, controlplane.Options{})
	l := New(t, Options{Prefix: testPrefix, Nodes: 1, ControlPlane: cp})
	n := l.Nodes[0]
	if n.APIServer != "https://127.0.0.1:6443" || n.Kubeconfig == "" {
		t.Fatalf("node api server %q kubeconfig %q", n.APIServer, n.Kubeconfig)
	}
	admin := filepath.Join(n.Dir, "admin.kubeconfig")
	if err := n.WriteKubeconfig(admin, controlplane.Admin); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A real process inside the node creates a Node object as admin...
	cmd := n.Command(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=kube-client", "KUBECONFIG="+admin, "LAB_NODE="+n.Name)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client inside %s: %v\n%s", n.NS, err, out)
	}
	hostClient := kubernetes.NewForConfigOrDie(cp.Config(controlplane.Admin))
	if _, err := hostClient.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{}); err != nil {
		t.Fatalf("node created from inside the namespace: %v (client said %s)", err, out)
	}

	// ...and the node's default kubeconfig authenticates as overlayd, which
	// has no RBAC bindings yet: the API server answers Forbidden.
	cfg, err := clientcmd.BuildConfigFromFlags("", n.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dial = n.Dial
	_, err = kubernetes.NewForConfigOrDie(cfg).CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("list nodes as overlayd from inside the node: %v, want forbidden", err)
	}

	// CutAPI resets an open connection and refuses new ones (as nothing
	// listening does); RestoreAPI ends that.
	conn, err := n.Dial(ctx, "tcp", "127.0.0.1:6443")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := n.CutAPI(); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("an open connection survived CutAPI: read %v", err)
	}
	cfg.Timeout = 5 * time.Second
	if _, err = kubernetes.NewForConfigOrDie(cfg).CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("list nodes while cut off: %v, want connection refused", err)
	}
	if err := n.RestoreAPI(); err != nil {
		t.Fatal(err)
	}
	if _, err = kubernetes.NewForConfigOrDie(cfg).CoreV1().Nodes().List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("list nodes after RestoreAPI: %v, want the API server's answer (forbidden)", err)
	}
}

func helperKubeClient() int {
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	c := kubernetes.NewForConfigOrDie(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: os.Getenv("LAB_NODE")}}
	if _, err := c.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Println("created", node.Name, "via", cfg.Host)
	return 0
}

// TestProcesses starts, stops, kills and restarts a process in a node.
func TestProcesses(t *testing.T) {
	l := New(t, Options{Prefix: testPrefix, Nodes: 1})
	n := l.Nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// The process sees the node's eth0 and the environment it was given.
	p, err := n.StartWithEnv("shell", []string{"LAB_GREETING=hello"},
		"sh", "-c", `ip -o -4 addr show dev eth0; echo "greeting=$LAB_GREETING"; exec sleep 1000`)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WaitLog(ctx, n.IP.String()+"/24"); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitLog(ctx, "greeting=hello"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Start("shell", "true"); err == nil {
		t.Fatal("a second process with the same name was accepted")
	}
	if err := p.Start(); err == nil {
		t.Fatal("starting a running process succeeded")
	}

	first := p.Pid()
	if err := p.Stop(); err == nil || !strings.Contains(err.Error(), "terminated") {
		t.Fatalf("stop: %v, want exit by SIGTERM", err)
	}
	if p.Running() || processAlive(first) {
		t.Fatal("process still running after Stop")
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	if p.Pid() == first || !p.Running() {
		t.Fatalf("restart: pid %d (was %d), running %v", p.Pid(), first, p.Running())
	}
	if err := p.WaitLog(ctx, "=== lab: run 2"); err != nil {
		t.Fatal(err)
	}
	second := p.Pid()
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(fmt.Sprint(p.ExitErr()), "killed") || processAlive(second) {
		t.Fatalf("after Kill: exit %v, alive %v", p.ExitErr(), processAlive(second))
	}
	if err := p.Restart(); err != nil {
		t.Fatal(err)
	}
	if !p.Running() {
		t.Fatal("not running after Restart")
	}

	// Exec returns output, and a failure's error carries it.
	out, err := n.Exec(ctx, "ip", "-o", "link", "show", "eth0")
	if err != nil || !strings.Contains(out, "mtu 1500") {
		t.Fatalf("exec: %q %v", out, err)
	}
	if _, err := n.Exec(ctx, "sh", "-c", "echo oops; exit 3"); err == nil || !strings.Contains(err.Error(), "oops") {
		t.Fatalf("failing exec: %v", err)
	}
}

func processAlive(pid int) bool {
	return syscall.Kill(pid, 0) == nil && !isZombie(pid)
}

// TestPinger counts exactly: with the path up every request is answered;
// with the peer's address removed for a while the losses are counted and
// the replies come back when it returns.
func TestPinger(t *testing.T) {
	l := New(t, Options{Prefix: testPrefix, Nodes: 2})
	a, b := l.Nodes[0], l.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	p, err := a.StartPinger(b.IP, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WaitReceived(ctx, 50); err != nil {
		t.Fatal(err)
	}
	st := p.Stop()
	t.Logf("healthy path: %s", st)
	if st.Sent < 50 || st.Received != st.Sent || st.Lost != 0 {
		t.Fatalf("healthy path: %s", st)
	}

	// Take b's eth0 down until the pinger has seen losses, then up again.
	p, err = a.StartPinger(b.IP, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WaitReceived(ctx, 10); err != nil {
		t.Fatal(err)
	}
	setLink(t, &b.Host, "eth0", false)
	for p.Stats().Lost < 20 {
		select {
		case <-ctx.Done():
			t.Fatalf("no losses with eth0 down: %s", p.Stats())
		case <-time.After(10 * time.Millisecond):
		}
	}
	setLink(t, &b.Host, "eth0", true)
	before := p.Stats().Received
	if err := p.WaitReceived(ctx, before+10); err != nil {
		t.Fatal(err)
	}
	st = p.Stop()
	t.Logf("with an outage: %s", st)
	if st.Lost < 20 || st.Sent != st.Received+st.Lost || st.MaxConsecutiveLost < 20 {
		t.Fatalf("with an outage: %s", st)
	}
}

func setLink(t *testing.T, h *Host, name string, up bool) {
	t.Helper()
	nl, err := h.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	link, err := nl.LinkByName(name)
	if err == nil {
		if up {
			err = nl.LinkSetUp(link)
		} else {
			err = nl.LinkSetDown(link)
		}
	}
	if err != nil {
		t.Fatalf("%s: setting %s up=%v: %v", h.NS, name, up, err)
	}
}

// TestCloseRemovesEverything builds a lab with every kind of part and
// checks Close leaves nothing: no namespace, no process (also one started
// behind the lab's back), no directory, no lock.
func TestCloseRemovesEverything(t *testing.T) {
	cp := controlplane.StartT(t, controlplane.Options{})
	l, err := Start(Options{Prefix: testPrefix, Nodes: 2, RoutedNodes: 1, ExternalHost: true, ControlPlane: cp, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			l.Close()
		}
	}()
	if _, err := l.Nodes[0].AddPod("x", podSubnet(1)); err != nil {
		t.Fatal(err)
	}
	for _, n := range l.Nodes {
		os.WriteFile(n.SubnetEnv, fmt.Appendf(nil, "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.%d.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", n.Index), 0o644)
	}
	if _, err := l.Nodes[1].AddCNIPod("y"); err != nil {
		t.Fatal(err)
	}
	proc, err := l.Nodes[0].Start("sleeper", "sleep", "1000")
	if err != nil {
		t.Fatal(err)
	}
	stray := l.Nodes[2].Command(context.Background(), "sleep", "1000")
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	strayDone := make(chan struct{})
	go func() { stray.Wait(); close(strayDone) }()
	if _, err := l.Nodes[0].StartPinger(l.Nodes[1].IP, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}

	names := l.NamespaceNames()
	// underlay, gw, ext, 3 nodes, 2 pods
	if len(names) != 8 {
		t.Fatalf("namespaces %v, want 8", names)
	}
	listed := netnsList(t)
	for _, name := range names {
		if !strings.Contains(listed, name) {
			t.Fatalf("%s not in ip netns list:\n%s", name, listed)
		}
	}
	dir, pid := l.Dir, proc.Pid()

	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	if listed := netnsList(t); strings.Contains(listed, testPrefix+"-"+l.ID+"-") {
		t.Errorf("namespaces left after Close:\n%s", listed)
	}
	if processAlive(pid) {
		t.Errorf("process %d alive after Close", pid)
	}
	select {
	case <-strayDone:
	case <-time.After(10 * time.Second):
		t.Errorf("stray process %d alive after Close", stray.Process.Pid)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("lab dir %s after Close: %v", dir, err)
	}
	if _, err := os.Stat(lockPath(testPrefix, l.ID)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("lock file after Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestSweepAfterCrash kills a process that built a lab, checks its
// children died with it (Pdeathsig) while its namespaces stayed, then
// sweeps them, leaving a live lab of the same prefix alone.
func TestSweepAfterCrash(t *testing.T) {
	live := New(t, Options{Prefix: testPrefix, Nodes: 1})

	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=crash")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("reading from crash helper: %v", err)
	}
	var id, dir string
	var sleeper int
	if _, err := fmt.Sscan(line, &id, &dir, &sleeper); err != nil {
		t.Fatalf("crash helper said %q: %v", line, err)
	}
	cmd.Process.Kill()
	cmd.Wait()

	crashed := testPrefix + "-" + id + "-"
	if !strings.Contains(netnsList(t), crashed) {
		t.Fatalf("crashed lab's namespaces are not there to sweep")
	}
	deadline := time.Now().Add(10 * time.Second)
	for processAlive(sleeper) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d of the crashed lab survived it", sleeper)
		}
		time.Sleep(10 * time.Millisecond)
	}

	removed, err := Sweep(testPrefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) == 0 {
		t.Fatal("sweep removed nothing")
	}
	for _, name := range removed {
		if !strings.HasPrefix(name, crashed) {
			t.Errorf("sweep removed %s, not of the crashed lab", name)
		}
	}
	listed := netnsList(t)
	if strings.Contains(listed, crashed) {
		t.Errorf("crashed lab's namespaces left after sweep:\n%s", listed)
	}
	for _, name := range live.NamespaceNames() {
		if !strings.Contains(listed, name) {
			t.Errorf("sweep removed %s of a live lab", name)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("crashed lab's dir %s after sweep: %v", dir, err)
	}
	if _, err := os.Stat(lockPath(testPrefix, id)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("crashed lab's lock after sweep: %v", err)
	}
}

// helperCrash builds a lab with a process in it, reports them, and waits
// to be killed.
func helperCrash() int {
	l, err := Start(Options{Prefix: testPrefix, Nodes: 1})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	p, err := l.Nodes[0].Start("sleeper", "sleep", "1000")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(l.ID, l.Dir, strconv.Itoa(p.Pid()))
	time.Sleep(time.Hour) // until killed
	return 0
}

// TestBadInput: bad options and a failing CNI attach give clear errors and
// leave nothing behind.
func TestBadInput(t *testing.T) {
	for _, opts := range []Options{{Prefix: ""}, {Prefix: "has space"}, {Prefix: "ovlE", Nodes: -1}, {Prefix: "ovlE", PodMTU: 100}} {
		if l, err := Start(opts); err == nil {
			l.Close()
			t.Errorf("Start(%+v) succeeded", opts)
		}
	}
	l := New(t, Options{Prefix: testPrefix, Nodes: 1})
	n := l.Nodes[0]
	if _, err := n.AddPod("Bad_Name", podSubnet(1)); err == nil || !strings.Contains(err.Error(), "Bad_Name") {
		t.Errorf("bad pod name: %v", err)
	}
	if _, err := n.AddPod("p", netip.MustParsePrefix("10.244.1.7/24")); err == nil {
		t.Error("unmasked subnet accepted")
	}
	// No subnet.env yet: the flannel plugin fails, saying why.
	_, err := n.AddCNIPod("early")
	if err == nil || !strings.Contains(err.Error(), "subnet.env") {
		t.Fatalf("CNI pod without subnet.env: %v", err)
	}
	if names := l.NamespaceNames(); len(names) != 3 { // underlay, gw, node-1
		t.Errorf("namespaces after a failed attach: %v", names)
	}
	os.WriteFile(n.SubnetEnv, []byte("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"), 0o644)
	if _, err := n.AddCNIPod("early"); err != nil {
		t.Fatalf("the name of a failed pod is free again: %v", err)
	}
}
