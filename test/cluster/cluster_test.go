package cluster

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/test/lab"
)

func TestParseSamplesAndSum(t *testing.T) {
	page := `# HELP overlayd_leases Peer leases.
# TYPE overlayd_leases gauge
overlayd_leases 2
overlayd_kernel_entries{kind="route"} 3
overlayd_kernel_entries{kind="neigh"} 4
overlayd_kernel_entries_total 100
overlayd_odd{path="a b"} 1.5
not a sample line
`
	s := ParseSamples(page)
	for name, want := range map[string]float64{
		"overlayd_leases":                         2,
		`overlayd_kernel_entries{kind="route"}`:   3,
		"overlayd_kernel_entries":                 7, // every label set, not the _total metric
		`overlayd_odd{path="a b"}`:                1.5,
		"overlayd_missing":                        0,
		`overlayd_kernel_entries{kind="missing"}`: 0,
	} {
		if got := s.Sum(name); got != want {
			t.Errorf("Sum(%s) = %v, want %v", name, got, want)
		}
	}
	if len(s) != 5 {
		t.Errorf("parsed %d samples, want 5: %v", len(s), s)
	}
}

func TestPoll(t *testing.T) {
	t.Run("holds", func(t *testing.T) {
		calls := 0
		err := Poll(context.Background(), time.Second, time.Millisecond, func() (bool, string) {
			calls++
			return calls == 3, "not yet"
		})
		if err != nil || calls != 3 {
			t.Fatalf("err %v after %d calls; want nil after 3", err, calls)
		}
	})
	t.Run("times out with the last explanation, asked after the deadline", func(t *testing.T) {
		start := time.Now()
		var last time.Time
		n := 0
		err := Poll(context.Background(), 50*time.Millisecond, 10*time.Millisecond, func() (bool, string) {
			n++
			last = time.Now()
			return false, "attempt " + strings.Repeat("I", n)
		})
		if err == nil || !strings.Contains(err.Error(), "not true after 50ms: attempt "+strings.Repeat("I", n)) {
			t.Fatalf("err %v; want the timeout and the last attempt's explanation", err)
		}
		if last.Sub(start) < 50*time.Millisecond {
			t.Fatalf("last asked %s after the start; want after the 50ms deadline", last.Sub(start))
		}
	})
	t.Run("context ends", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		err := Poll(ctx, time.Minute, time.Millisecond, func() (bool, string) {
			cancel()
			return false, "waiting"
		})
		if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "waiting") {
			t.Fatalf("err %v; want context.Canceled with the last explanation", err)
		}
	})
}

func TestSubnetEnv(t *testing.T) {
	dir := t.TempDir()
	n := &lab.Node{Name: "node-1", SubnetEnv: filepath.Join(dir, "subnet.env")}
	if _, err := SubnetOf(n); err == nil || !strings.Contains(err.Error(), "reading subnet.env of node-1") {
		t.Fatalf("missing file: %v", err)
	}
	env := "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
	if err := os.WriteFile(n.SubnetEnv, []byte(env), 0o644); err != nil {
		t.Fatal(err)
	}
	if v, err := SubnetEnv(n, "FLANNEL_MTU"); err != nil || v != "1450" {
		t.Fatalf("FLANNEL_MTU = %q, %v; want 1450", v, err)
	}
	if p, err := SubnetOf(n); err != nil || p != netip.MustParsePrefix("10.244.3.0/24") {
		t.Fatalf("SubnetOf = %s, %v; want the masked 10.244.3.0/24", p, err)
	}
	if _, err := SubnetEnv(n, "FLANNEL_IPV6_SUBNET"); err == nil || !strings.Contains(err.Error(), "no FLANNEL_IPV6_SUBNET in") {
		t.Fatalf("absent key: %v", err)
	}
}

func TestProcessFigures(t *testing.T) {
	rss, hwm, err := ProcessMemory(os.Getpid())
	if err != nil || rss <= 0 || hwm < rss {
		t.Fatalf("ProcessMemory = %d, %d, %v; want 0 < VmRSS <= VmHWM", rss, hwm, err)
	}
	anon, file, err := ProcessRSSParts(os.Getpid())
	_, hwm, _ = ProcessMemory(os.Getpid()) // read after: the peak is at least any RSS before it
	if err != nil || anon <= 0 || file <= 0 || anon+file > hwm {
		t.Fatalf("ProcessRSSParts = %d, %d, %v; want both > 0, their sum <= VmHWM %d", anon, file, err, hwm)
	}
	if _, err := ProcessCPUSeconds(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ProcessRSSParts(-1); err == nil {
		t.Fatal("ProcessRSSParts of no process: no error")
	}
	if _, _, err := ProcessMemory(-1); err == nil {
		t.Fatal("ProcessMemory of no process: no error")
	}
}

func TestPrepareRefusesBadOptions(t *testing.T) {
	if _, err := Prepare(Options{NetConf: `{"Network": "10.244.0.0/16"}`}); err == nil || !strings.Contains(err.Error(), "Prefix") {
		t.Errorf("no prefix: %v", err)
	}
	if _, err := Prepare(Options{Prefix: "ovlCH", NetConf: `{"Network": "10.244.0.0/33"}`}); err == nil || !strings.Contains(err.Error(), "Options.NetConf") {
		t.Errorf("bad net-conf.json: %v", err)
	}
}

// TestStartAndClose builds a whole cluster with the Start form (harness
// assigned podCIDRs, host-gw, one direct pod per node), checks what the
// harness reports of it against the kernel and the API server, restarts an
// agent with other flags, and checks that Close leaves no namespace behind.
func TestStartAndClose(t *testing.T) {
	bin, remove, err := BuildOverlayd()
	if err != nil {
		t.Fatal(err)
	}
	defer remove()
	ctx := context.Background()
	c, err := Start(ctx, Options{
		Prefix: "ovlCH", Nodes: 2, AssignPodCIDRs: true,
		NetConf:  `{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}`,
		Overlayd: bin, PodsPerNode: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	namespaces := c.Lab.NamespaceNames()
	closed := false
	defer func() {
		if !closed {
			c.Close()
		}
	}()

	leases, err := c.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 2 {
		t.Fatalf("%d leases, want 2: %v", len(leases), leases)
	}
	for i, l := range leases {
		n := c.Lab.Nodes[i]
		want, _ := ip.NthSubnet(c.Net.Network, c.Net.SubnetLen, uint64(n.Index))
		if l.Node != n.Name || l.Subnet != want || l.PublicIP != n.IP || l.BackendType != "host-gw" {
			t.Errorf("lease %+v; want node %s, subnet %s, public IP %s, host-gw", l, n.Name, want, n.IP)
		}
		if sub, err := SubnetOf(n); err != nil || sub != want {
			t.Errorf("%s: subnet.env says %s (%v), the harness assigned %s", n.Name, sub, err, want)
		}
		if pods := c.PodsOn(n); len(pods) != 1 || pods[0].Name != n.Name+"-p0" || !want.Contains(pods[0].IP) {
			t.Errorf("%s: pods %v; want one named %s-p0 in %s", n.Name, pods, n.Name, want)
		}
	}
	a, b := c.Pods[0], c.Pods[1]
	if err := a.PingWithin(b.IP, 20*time.Second); err != nil {
		t.Fatalf("pods across nodes: %v", err)
	}
	m, err := c.Metrics(ctx, c.Lab.Nodes[0])
	if err != nil {
		t.Fatal(err)
	}
	if v := m.Sum("overlayd_leases"); v != 1 {
		t.Errorf("overlayd_leases = %v, want 1 (the peer)", v)
	}

	n := c.Lab.Nodes[0]
	if err := c.RestartAgent(n, []string{"--log-level", "debug"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitReady(ctx, n, ReadyTimeout); err != nil {
		t.Fatal(err)
	}
	if argv := c.Agents[n.Name].Argv; !slices.Equal(argv[len(argv)-2:], []string{"--log-level", "debug"}) {
		t.Errorf("restarted with %v; want the new flags last", argv)
	}
	if !strings.Contains(c.Agents[n.Name].Log(), "DEBUG") {
		t.Error("the restarted agent does not log at debug")
	}
	// An agent that exits is reported as such, not as a timeout.
	c.Agents[n.Name].Stop()
	if _, err := c.WaitReady(ctx, n, ReadyTimeout); err == nil || !strings.Contains(err.Error(), "overlayd on "+n.Name+" exited") {
		t.Errorf("WaitReady on a stopped agent: %v", err)
	}

	closed = true
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ns := range namespaces {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			t.Errorf("namespace %s is still there after Close", ns)
		}
	}
}

// A test that needs flanneld and cannot find it fails before anything
// starts, saying how to build it.
func TestPrepareNeedsFlanneld(t *testing.T) {
	t.Setenv("OVERLAYD_TEST_BIN_DIR", t.TempDir())
	_, err := Prepare(Options{Prefix: "ovlCH", NetConf: `{"Network": "10.244.0.0/16"}`, FlanneldNodes: []string{"node-1"}})
	if err == nil || !strings.Contains(err.Error(), "flanneld missing") || !strings.Contains(err.Error(), "make flannel-bin") {
		t.Fatalf("Prepare without a flanneld binary: %v", err)
	}
	c, err := Prepare(Options{Prefix: "ovlCH", NetConf: `{"Network": "10.244.0.0/16"}`})
	if err != nil {
		t.Fatal(err)
	}
	n := &lab.Node{Name: "node-1"}
	if got := c.AgentProgram(n); got != Overlayd {
		t.Errorf("default agent %s, want %s", got, Overlayd)
	}
	if err := c.UseAgent(n, "calico"); err == nil {
		t.Error("UseAgent accepted an unknown program")
	}
	if err := c.UseAgent(n, Flanneld); err != nil || c.AgentProgram(n) != Flanneld {
		t.Errorf("UseAgent(flanneld): %v, program %s", err, c.AgentProgram(n))
	}
	if _, err := c.StartAgent(n); err == nil || !strings.Contains(err.Error(), "flanneld missing") {
		t.Errorf("StartAgent of flanneld without a binary: %v", err)
	}
}
