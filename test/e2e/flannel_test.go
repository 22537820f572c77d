package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/overlayd/overlayd/netconf"
	harness "github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/lab"
)

// flannelPrefix is flanneld's annotation prefix; overlayd given it with
// --kube-annotation-prefix is a peer of flanneld nodes.
const flannelPrefix = "flannel.alpha.coreos.com"

// TestMixedFlannelCluster: four nodes with the same net-conf.json, overlayd
// with --kube-annotation-prefix=flannel.alpha.coreos.com on node-1 and
// node-2, the real flanneld (v0.28.10, hack/tools/flannel) on node-3 and
// node-4; one pod per node attached by the real CNI plugins from its
// agent's subnet.env. Every pod reaches every other: 12 of 12 ordered
// pairs, on each backend both have.
func TestMixedFlannelCluster(t *testing.T) {
	for _, tc := range []struct {
		name, backend, conf string
		dualStack           bool
	}{
		{"vxlan", "vxlan", netConf("vxlan"), false},
		{"host-gw", "host-gw", netConf("host-gw"), false},
		{"udp", "udp", netConf("udp"), false},
		{"vxlan dual-stack", "vxlan", netConfDual("vxlan"), true},
		{"host-gw dual-stack", "host-gw", netConfDual("host-gw"), true},
	} {
		backend := tc.backend
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			c := newCluster(t, clusterOptions{
				Nodes: 4, NetConf: tc.conf, CNIPods: true,
				Args:          []string{"--kube-annotation-prefix", flannelPrefix},
				FlanneldNodes: []string{"node-3", "node-4"},
			})
			// Each agent built its own datapath: flanneld's devices on its
			// nodes, overlayd's on the others.
			devices := map[string]map[string]string{
				"vxlan": {harness.Overlayd: "overlay.1", harness.Flanneld: "flannel.1"},
				"udp":   {harness.Overlayd: "overlay0", harness.Flanneld: "flannel0"},
			}[backend]
			for i, n := range c.Lab.Nodes {
				want := harness.Overlayd
				if i >= 2 {
					want = harness.Flanneld
				}
				if got := c.Agents[n.Name].Name; got != want {
					t.Fatalf("%s runs %s, want %s", n.Name, got, want)
				}
				devs := []string{devices[want]}
				if tc.dualStack && backend == "vxlan" {
					devs = append(devs, map[string]string{harness.Overlayd: "overlay-v6.1", harness.Flanneld: "flannel-v6.1"}[want])
				}
				for _, dev := range devs {
					if dev == "" {
						continue
					}
					if _, err := n.Exec(context.Background(), "ip", "link", "show", dev); err != nil {
						t.Errorf("%s (%s): no %s: %v", n.Name, want, dev, err)
					}
				}
			}
			t.Logf("%s: published:\n%s", backend, flannelAnnotations(t, c))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			pairs := len(c.Pods) * (len(c.Pods) - 1)
			if pairs != 12 {
				t.Fatalf("%d pods, %d pairs; want 4 pods, 12 pairs", len(c.Pods), pairs)
			}
			families := []bool{false}
			if tc.dualStack {
				families = append(families, true)
			}
			for _, v6 := range families {
				m := lab.CheckMatrixFamily(ctx, c.Pods, 30*time.Second, v6)
				if failed := m.Failed(); len(failed) > 0 {
					for _, n := range c.Lab.Nodes {
						t.Logf("%s", nodeNetworkState(n))
					}
					t.Fatalf("%s: %d of %d pairs reach each other over %s:\n%s", tc.name, pairs-len(failed), pairs, familyName(v6), m)
				}
				t.Logf("%s: %d of %d pairs reach each other over %s (overlayd node-1, node-2; flanneld node-3, node-4), %s",
					tc.name, pairs, pairs, familyName(v6), time.Since(start).Round(time.Millisecond))
			}
		})
	}
}

// flannelAnnotations lists what every Node carries under flanneld's prefix.
func flannelAnnotations(t *testing.T, c *cluster) string {
	t.Helper()
	nodes, err := c.Admin.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, n := range nodes.Items {
		var keys []string
		for k := range n.Annotations {
			if strings.HasPrefix(k, flannelPrefix+"/") {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		fmt.Fprintf(&b, "  %s (podCIDR %s):", n.Name, n.Spec.PodCIDR)
		for _, k := range keys {
			fmt.Fprintf(&b, " %s=%s", strings.TrimPrefix(k, flannelPrefix+"/"), n.Annotations[k])
		}
		b.WriteString("\n")
	}
	return b.String()
}

// nodeNetworkState is what a node's kernel holds for the overlay, for
// failure reports: links, addresses, routes, neighbours, the FDB and the
// iptables rules.
func nodeNetworkState(n *lab.Node) string {
	var b strings.Builder
	fmt.Fprintf(&b, "--- %s (%s):\n", n.Name, n.IP)
	for _, argv := range [][]string{
		{"ip", "-d", "link", "show"},
		{"ip", "addr", "show"},
		{"ip", "route", "show"},
		{"ip", "-6", "route", "show"},
		{"ip", "neigh", "show"},
		{"bridge", "fdb", "show"},
		{"iptables-save"},
	} {
		out, err := n.Exec(context.Background(), argv...)
		fmt.Fprintf(&b, "$ %s\n%s", strings.Join(argv, " "), out)
		if err != nil {
			fmt.Fprintf(&b, "(%v)\n", err)
		}
	}
	return b.String()
}

// envCase is one net-conf.json and set of flags given to flanneld and to
// overlayd in turn on the same node.
type envCase struct {
	name        string
	netConf     string
	flags       []string // given to both agents
	underlayMTU int      // the node's underlay link; 0: lab.UnderlayMTU
	// wantMTU is FLANNEL_MTU as flanneld's code computes it (vxlan: the
	// MTU key, else the underlay's, less 50; udp: the underlay's less 28;
	// host-gw: the underlay's).
	wantMTU int
	// The tunnel devices each creates (for IPv6: the ...6 ones); none with
	// host-gw.
	flanneldDev, overlaydDev   string
	flanneldDev6, overlaydDev6 string
}

const (
	netVXLAN  = `{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}`
	netHostGW = `{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}`
	netUDP    = `{"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}`
)

// envCases are grouped by what node IPAM depends on (Network, SubnetLen):
// one cluster per group, one node per case.
var envCases = [][]envCase{{
	{name: "vxlan default", netConf: netVXLAN, wantMTU: 1450, flanneldDev: "flannel.1", overlaydDev: "overlay.1"},
	{name: "vxlan MTU 1400", netConf: `{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "MTU": 1400}}`,
		wantMTU: 1350, flanneldDev: "flannel.1", overlaydDev: "overlay.1"},
	{name: "vxlan VNI 4096", netConf: `{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 4096}}`,
		wantMTU: 1450, flanneldDev: "flannel.4096", overlaydDev: "overlay.4096"},
	{name: "vxlan Port 4789", netConf: `{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "Port": 4789}}`,
		wantMTU: 1450, flanneldDev: "flannel.1", overlaydDev: "overlay.1p4789"},
	// flannel's setting for clusters with Windows nodes.
	{name: "vxlan VNI 4096 Port 4789", netConf: `{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 4096, "Port": 4789}}`,
		wantMTU: 1450, flanneldDev: "flannel.4096", overlaydDev: "vx4096p4789"},
	{name: "vxlan DirectRouting", netConf: `{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": true}}`,
		wantMTU: 1450, flanneldDev: "flannel.1", overlaydDev: "overlay.1"},
	{name: "vxlan --ip-masq", netConf: netVXLAN, flags: []string{"--ip-masq"},
		wantMTU: 1450, flanneldDev: "flannel.1", overlaydDev: "overlay.1"},
	{name: "vxlan --ip-masq=false", netConf: netVXLAN, flags: []string{"--ip-masq=false"},
		wantMTU: 1450, flanneldDev: "flannel.1", overlaydDev: "overlay.1"},
	{name: "vxlan underlay MTU 1400", netConf: netVXLAN, underlayMTU: 1400,
		wantMTU: 1350, flanneldDev: "flannel.1", overlaydDev: "overlay.1"},
	{name: "vxlan underlay MTU 9000", netConf: netVXLAN, underlayMTU: 9000,
		wantMTU: 8950, flanneldDev: "flannel.1", overlaydDev: "overlay.1"},
	{name: "vxlan MTU 1500 underlay MTU 9000", netConf: `{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "MTU": 1500}}`,
		underlayMTU: 9000, wantMTU: 1450, flanneldDev: "flannel.1", overlaydDev: "overlay.1"},
	{name: "host-gw default", netConf: netHostGW, wantMTU: 1500},
	{name: "host-gw --ip-masq", netConf: netHostGW, flags: []string{"--ip-masq"}, wantMTU: 1500},
	{name: "host-gw underlay MTU 1400", netConf: netHostGW, underlayMTU: 1400, wantMTU: 1400},
	{name: "host-gw underlay MTU 9000", netConf: netHostGW, underlayMTU: 9000, wantMTU: 9000},
	{name: "udp default", netConf: netUDP, wantMTU: 1472, flanneldDev: "flannel0", overlaydDev: "overlay0"},
	{name: "udp Port 8300", netConf: `{"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Port": 8300}}`,
		wantMTU: 1472, flanneldDev: "flannel0", overlaydDev: "overlay0"},
	{name: "udp underlay MTU 1400", netConf: netUDP, underlayMTU: 1400, wantMTU: 1372, flanneldDev: "flannel0", overlaydDev: "overlay0"},
	{name: "udp underlay MTU 9000", netConf: netUDP, underlayMTU: 9000, wantMTU: 8972, flanneldDev: "flannel0", overlaydDev: "overlay0"},
}, {
	{name: "vxlan Network 10.42.0.0/16 SubnetLen 26", netConf: `{"Network": "10.42.0.0/16", "SubnetLen": 26, "Backend": {"Type": "vxlan"}}`,
		wantMTU: 1450, flanneldDev: "flannel.1", overlaydDev: "overlay.1"},
}, {
	// Dual-stack: FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET too, and a
	// second VXLAN device for IPv6 (40 bytes of IPv6 header instead of 20).
	{name: "vxlan dual-stack", netConf: netVXLANDual, wantMTU: 1450,
		flanneldDev: "flannel.1", overlaydDev: "overlay.1", flanneldDev6: "flannel-v6.1", overlaydDev6: "overlay-v6.1"},
	{name: "vxlan dual-stack DirectRouting", netConf: `{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56", "Backend": {"Type": "vxlan", "DirectRouting": true}}`,
		wantMTU: 1450, flanneldDev: "flannel.1", overlaydDev: "overlay.1", flanneldDev6: "flannel-v6.1", overlaydDev6: "overlay-v6.1"},
	{name: "vxlan dual-stack --ip-masq", netConf: netVXLANDual, flags: []string{"--ip-masq"}, wantMTU: 1450,
		flanneldDev: "flannel.1", overlaydDev: "overlay.1", flanneldDev6: "flannel-v6.1", overlaydDev6: "overlay-v6.1"},
	{name: "vxlan dual-stack underlay MTU 9000", netConf: netVXLANDual, underlayMTU: 9000, wantMTU: 8950,
		flanneldDev: "flannel.1", overlaydDev: "overlay.1", flanneldDev6: "flannel-v6.1", overlaydDev6: "overlay-v6.1"},
	{name: "host-gw dual-stack", netConf: `{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56", "Backend": {"Type": "host-gw"}}`,
		wantMTU: 1500},
}, {
	{name: "vxlan IPv6-only", netConf: `{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56", "Backend": {"Type": "vxlan"}}`,
		wantMTU: 1450, flanneldDev6: "flannel-v6.1", overlaydDev6: "overlay-v6.1"},
	{name: "vxlan IPv6-only --ip-masq", netConf: `{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56", "Backend": {"Type": "vxlan"}}`,
		flags: []string{"--ip-masq"}, wantMTU: 1450, flanneldDev6: "flannel-v6.1", overlaydDev6: "overlay-v6.1"},
	{name: "host-gw IPv6-only", netConf: `{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56", "Backend": {"Type": "host-gw"}}`,
		wantMTU: 1500},
}}

const netVXLANDual = `{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56", "Backend": {"Type": "vxlan"}}`

// envRun is what one agent left on a case's node.
type envRun struct {
	argv      []string
	subnetEnv []byte
	devMTU    int   // 0: no device expected
	devMTU6   int   // the IPv6 device's; 0: none expected
	err       error // the agent did not get ready, or something is missing
}

// envReadyTimeout bounds an agent's start in TestSubnetEnvLikeFlanneld
// (every case's agent starts at once; each is ready within seconds).
const envReadyTimeout = 20 * time.Second

// TestSubnetEnvLikeFlanneld: for the same net-conf.json and flags, on the
// same node with the same podCIDR, overlayd writes the same subnet.env as
// the real flanneld, byte for byte, and its tunnel device has the same MTU.
// Each case has a node of its own: flanneld runs there first (as flannel's
// DaemonSet runs it, with the case's flags); its subnet.env and device MTU
// are read, it is stopped with SIGTERM and the node is cleaned (flanneld's
// devices and FLANNEL-* chains deleted, subnet.env removed: overlayd cannot
// take over a flanneld node in place yet); then overlayd runs there with
// the same file and flags (and flanneld's annotation prefix, flanneld's
// default, given to both), and its subnet.env is compared whole.
func TestSubnetEnvLikeFlanneld(t *testing.T) {
	for _, cases := range envCases {
		cfg, err := netconf.Parse([]byte(cases[0].netConf))
		if err != nil {
			t.Fatal(err)
		}
		var nets []string
		if cfg.EnableIPv4 {
			nets = append(nets, fmt.Sprintf("%s SubnetLen %d", cfg.Network, cfg.SubnetLen))
		}
		if cfg.EnableIPv6 {
			nets = append(nets, fmt.Sprintf("%s IPv6SubnetLen %d", cfg.IPv6Network, cfg.IPv6SubnetLen))
		}
		t.Run(strings.Join(nets, " "), func(t *testing.T) {
			compareSubnetEnv(t, cases)
		})
	}
}

func compareSubnetEnv(t *testing.T, cases []envCase) {
	ctx := context.Background()
	prefix := []string{"--kube-annotation-prefix", flannelPrefix}
	nodeArgs := map[string][]string{}
	var names []string
	for i, tc := range cases {
		name := fmt.Sprintf("node-%d", i+1)
		names = append(names, name)
		nodeArgs[name] = tc.flags
	}
	c := harness.New(t, harness.Options{
		Prefix: labPrefix, Nodes: len(cases), AssignPodCIDRs: true, NetConf: cases[0].netConf, NoAgents: true,
		Overlayd: overlaydBin,
		// flanneld's FlanneldArgv has these two; the prefix is flanneld's default.
		Args:          slices.Concat([]string{"--kube-subnet-mgr", "--iface", lab.UnderlayIface}, prefix),
		FlanneldNodes: names, FlanneldArgs: prefix,
		NodeArgs: nodeArgs,
	})
	flanneld := make([]envRun, len(cases))
	overlayd := make([]envRun, len(cases))

	// flanneld on every case's node.
	for i, tc := range cases {
		n := c.Lab.Nodes[i]
		if err := c.WriteNetConf(n, tc.netConf); err != nil {
			t.Fatal(err)
		}
		if tc.underlayMTU != 0 {
			if err := n.SetUnderlayMTU(tc.underlayMTU); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.StartAgent(n); err != nil {
			t.Fatal(err)
		}
	}
	for i, tc := range cases {
		flanneld[i] = readEnvRun(c, c.Lab.Nodes[i], tc.flanneldDev, tc.flanneldDev6)
	}
	var wg sync.WaitGroup
	for i, n := range c.Lab.Nodes {
		wg.Go(func() {
			if err := c.Agents[n.Name].Stop(); err != nil && flanneld[i].err == nil {
				flanneld[i].err = fmt.Errorf("flanneld on %s did not exit cleanly on SIGTERM: %w", n.Name, err)
			}
		})
	}
	wg.Wait()

	// Clean each node, then overlayd on it with the same file and flags.
	for i := range cases {
		n := c.Lab.Nodes[i]
		if err := harness.RemoveFlanneldState(ctx, n); err != nil {
			t.Fatal(err)
		}
		if out, err := n.Exec(ctx, "sh", "-c", "ip -o link show | grep flannel || iptables-save | grep FLANNEL"); err == nil {
			t.Fatalf("%s: flanneld's state is still there:\n%s", n.Name, out)
		}
		if err := os.Remove(n.SubnetEnv); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
		if err := c.UseAgent(n, harness.Overlayd); err != nil {
			t.Fatal(err)
		}
		if _, err := c.StartAgent(n); err != nil {
			t.Fatal(err)
		}
	}
	for i, tc := range cases {
		overlayd[i] = readEnvRun(c, c.Lab.Nodes[i], tc.overlaydDev, tc.overlaydDev6)
	}

	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, o := flanneld[i], overlayd[i]
			if f.err != nil {
				t.Fatalf("flanneld: %v", f.err)
			}
			if o.err != nil {
				t.Fatalf("overlayd, given what flanneld ran with: %v\nflanneld wrote:\n%s", o.err, f.subnetEnv)
			}
			if a, b := sortedCopy(f.argv[1:]), sortedCopy(o.argv[1:]); !slices.Equal(a, b) {
				t.Fatalf("the agents were not given the same flags:\nflanneld %q\noverlayd %q", f.argv[1:], o.argv[1:])
			}
			if !bytes.Equal(f.subnetEnv, o.subnetEnv) {
				t.Errorf("subnet.env differs:\nflanneld:\n%s\noverlayd:\n%s", f.subnetEnv, o.subnetEnv)
			}
			// What both should have written, so that equal means right.
			podCIDRs, err := c.WaitPodCIDRs(ctx, c.Lab.Nodes[i], time.Second)
			if err != nil {
				t.Fatal(err)
			}
			wants := []string{
				fmt.Sprintf("FLANNEL_MTU=%d\n", tc.wantMTU),
				fmt.Sprintf("FLANNEL_IPMASQ=%t\n", slices.Contains(tc.flags, "--ip-masq")),
			}
			if p := podCIDRs.IPv4; p.IsValid() {
				wants = append(wants, fmt.Sprintf("FLANNEL_SUBNET=%s/%d\n", p.Addr().Next(), p.Bits()))
			}
			if p := podCIDRs.IPv6; p.IsValid() {
				wants = append(wants, fmt.Sprintf("FLANNEL_IPV6_SUBNET=%s/%d\n", p.Addr().Next(), p.Bits()))
			}
			for _, want := range wants {
				if !strings.Contains(string(f.subnetEnv), want) {
					t.Errorf("flanneld wrote no %q (the case's expectation is wrong?):\n%s", strings.TrimSpace(want), f.subnetEnv)
				}
			}
			if f.devMTU != o.devMTU {
				t.Errorf("device MTU: flanneld's %s %d, overlayd's %s %d", tc.flanneldDev, f.devMTU, tc.overlaydDev, o.devMTU)
			}
			if f.devMTU6 != o.devMTU6 {
				t.Errorf("IPv6 device MTU: flanneld's %s %d, overlayd's %s %d", tc.flanneldDev6, f.devMTU6, tc.overlaydDev6, o.devMTU6)
			}
			if tc.flanneldDev != "" && f.devMTU != tc.wantMTU {
				t.Errorf("flanneld's %s has MTU %d, its subnet.env says %d", tc.flanneldDev, f.devMTU, tc.wantMTU)
			}
			switch {
			case tc.flanneldDev6 != "" && tc.flanneldDev == "":
				t.Logf("identical subnet.env, IPv6 device MTU %d (%s, %s):\n%s", o.devMTU6, tc.flanneldDev6, tc.overlaydDev6, o.subnetEnv)
			case tc.flanneldDev6 != "":
				t.Logf("identical subnet.env, device MTU %d (%s, %s), IPv6 device MTU %d (%s, %s):\n%s", o.devMTU, tc.flanneldDev, tc.overlaydDev,
					o.devMTU6, tc.flanneldDev6, tc.overlaydDev6, o.subnetEnv)
			case tc.flanneldDev != "":
				t.Logf("identical subnet.env, device MTU %d (%s, %s):\n%s", o.devMTU, tc.flanneldDev, tc.overlaydDev, o.subnetEnv)
			default:
				t.Logf("identical subnet.env:\n%s", o.subnetEnv)
			}
		})
	}
}

// readEnvRun waits until the node's agent is ready (flanneld: subnet.env
// written and its rules in place) and reads its subnet.env and the MTUs of
// its devices.
func readEnvRun(c *harness.Cluster, n *lab.Node, dev, dev6 string) envRun {
	p := c.Agents[n.Name]
	r := envRun{argv: p.Argv}
	if _, r.err = c.WaitReady(context.Background(), n, envReadyTimeout); r.err != nil {
		return r
	}
	if r.subnetEnv, r.err = os.ReadFile(n.SubnetEnv); r.err != nil {
		return r
	}
	nl, err := n.Netlink()
	if err != nil {
		r.err = err
		return r
	}
	defer nl.Close()
	for _, d := range []struct {
		name string
		mtu  *int
	}{{dev, &r.devMTU}, {dev6, &r.devMTU6}} {
		if d.name == "" {
			continue
		}
		link, err := nl.LinkByName(d.name)
		if err != nil {
			r.err = fmt.Errorf("%s: no %s from %s: %w", n.Name, d.name, p.Name, err)
			return r
		}
		*d.mtu = link.Attrs().MTU
	}
	return r
}

func sortedCopy(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
