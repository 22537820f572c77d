package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/test/lab"
)

const (
	dualStackNetConf = `{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56", "Backend": {"Type": "host-gw"}}`
	ipv6OnlyNetConf  = `{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56", "IPv6SubnetLen": 60, "Backend": {"Type": "host-gw"}}`
)

// writeSubnetEnv writes the node's subnet.env as flanneld would for these
// leases, standing in for an agent.
func writeSubnetEnv(t *testing.T, n *lab.Node, cfg *netconf.Config, leases Subnets) {
	t.Helper()
	var b strings.Builder
	if leases.IPv4.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s/%d\n", cfg.Network, ip.FirstHost(leases.IPv4), leases.IPv4.Bits())
	}
	if leases.IPv6.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_IPV6_NETWORK=%s\nFLANNEL_IPV6_SUBNET=%s/%d\n", cfg.IPv6Network, ip.FirstHost(leases.IPv6), leases.IPv6.Bits())
	}
	b.WriteString("FLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n")
	if err := os.WriteFile(n.SubnetEnv, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// routeLeases routes, in every node, each other node's subnets via its
// underlay address of the subnet's family, as host-gw would.
func routeLeases(t *testing.T, nodes []*lab.Node, leases map[*lab.Node]Subnets) {
	t.Helper()
	for _, n := range nodes {
		for _, peer := range nodes {
			if peer == n {
				continue
			}
			for _, sub := range leases[peer].List() {
				if err := n.AddRoute(sub, peer.Addr(sub.Addr().Is6())); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

// TestDualStackNodeIPAM: with a dual-stack net-conf.json and no agents,
// kube-controller-manager gives every Node a podCIDR of each family from
// the file's networks and subnet lengths, the leases report both, and
// direct pods attached from a dual-stack subnet.env get both addresses and
// reach each other over both families through routes added by hand.
func TestDualStackNodeIPAM(t *testing.T) {
	c := New(t, Options{Prefix: "ovlCH", Nodes: 2, NetConf: dualStackNetConf, NoAgents: true, PodsPerNode: 2})
	ctx := context.Background()
	cidrs := map[*lab.Node]Subnets{}
	for _, n := range c.Lab.Nodes {
		got, err := c.WaitPodCIDRs(ctx, n, PodCIDRTimeout)
		if err != nil {
			t.Fatal(err)
		}
		if !c.Net.Network.Contains(got.IPv4.Addr()) || got.IPv4.Bits() != 24 || !c.Net.IPv6Network.Contains(got.IPv6.Addr()) || got.IPv6.Bits() != 64 {
			t.Errorf("%s: podCIDRs %s; want a /24 of %s and a /64 of %s", n.Name, got, c.Net.Network, c.Net.IPv6Network)
		}
		if first, err := c.WaitPodCIDR(ctx, n, time.Second); err != nil || first != got.IPv4 {
			t.Errorf("%s: WaitPodCIDR = %s, %v; want the IPv4 %s", n.Name, first, err, got.IPv4)
		}
		cidrs[n] = got
		writeSubnetEnv(t, n, c.Net, got)
	}
	if a, b := cidrs[c.Lab.Nodes[0]], cidrs[c.Lab.Nodes[1]]; a.IPv4 == b.IPv4 || a.IPv6 == b.IPv6 {
		t.Fatalf("two nodes share a podCIDR: %s, %s", a, b)
	}
	leases, err := c.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range leases {
		n := c.Lab.Nodes[i]
		if l.Node != n.Name || l.Subnet != cidrs[n].IPv4 || l.IPv6Subnet != cidrs[n].IPv6 || l.PublicIPv6.IsValid() {
			t.Errorf("lease %+v; want %s with %s and nothing published", l, n.Name, cidrs[n])
		}
	}

	if err := c.AttachPods(); err != nil {
		t.Fatal(err)
	}
	for _, p := range c.Pods {
		if want := cidrs[p.Node]; p.Subnet != want.IPv4 || !want.IPv4.Contains(p.IP) || p.Subnet6 != want.IPv6 || !want.IPv6.Contains(p.IP6) {
			t.Errorf("pod %s: %s in %s, %s in %s; want in %s", p.Name, p.IP, p.Subnet, p.IP6, p.Subnet6, want)
		}
	}
	routeLeases(t, c.Lab.Nodes, cidrs)
	for _, v6 := range []bool{false, true} {
		if m := lab.CheckMatrixFamily(ctx, c.Pods, 20*time.Second, v6); !m.OK() {
			t.Fatalf("IPv6 %v, failing pairs: %v\n%s", v6, m.Failed(), m)
		}
	}

	// What the e2e reads of a node's IPv6 kernel state: the route above.
	type route struct {
		Dst     string `json:"dst"`
		Gateway string `json:"gateway"`
	}
	n, peer := c.Lab.Nodes[0], c.Lab.Nodes[1]
	routes, err := lab.IPJSON[route](ctx, &n.Host, "-6", "route", "show")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(routes, route{Dst: cidrs[peer].IPv6.String(), Gateway: peer.IP6.String()}) {
		t.Errorf("%s: IPv6 routes %+v; want %s via %s", n.Name, routes, cidrs[peer].IPv6, peer.IP6)
	}
}

// TestIPv6OnlyAssignedPodCIDRs: in an IPv6-only cluster the harness
// assigns each Node one IPv6 podCIDR of the file's IPv6SubnetLen, and CNI
// pods attached from an IPv6-only subnet.env get an IPv6 address only and
// reach each other through routes added by hand.
func TestIPv6OnlyAssignedPodCIDRs(t *testing.T) {
	c := New(t, Options{Prefix: "ovlCH", Nodes: 2, NetConf: ipv6OnlyNetConf, AssignPodCIDRs: true, NoAgents: true, PodsPerNode: 1, CNIPods: true})
	ctx := context.Background()
	cidrs := map[*lab.Node]Subnets{}
	for _, n := range c.Lab.Nodes {
		node, err := c.Admin.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want, _ := ip.NthSubnet(c.Net.IPv6Network, 60, uint64(n.Index))
		if !slices.Equal(node.Spec.PodCIDRs, []string{want.String()}) || node.Spec.PodCIDR != want.String() {
			t.Errorf("%s: podCIDR %q podCIDRs %q; want %s only", n.Name, node.Spec.PodCIDR, node.Spec.PodCIDRs, want)
		}
		if first, err := c.WaitPodCIDR(ctx, n, time.Second); err != nil || first != want {
			t.Errorf("%s: WaitPodCIDR = %s, %v; want %s", n.Name, first, err, want)
		}
		cidrs[n] = Subnets{IPv6: want}
		writeSubnetEnv(t, n, c.Net, cidrs[n])
	}
	if err := c.AttachPods(); err != nil {
		t.Fatal(err)
	}
	for _, p := range c.Pods {
		if p.IP.IsValid() || !cidrs[p.Node].IPv6.Contains(p.IP6) || p.ContainerID == "" {
			t.Errorf("CNI pod %s: IPv4 %s, IPv6 %s; want IPv6 only, in %s", p.Name, p.IP, p.IP6, cidrs[p.Node].IPv6)
		}
	}
	routeLeases(t, c.Lab.Nodes, cidrs)
	if m := lab.CheckMatrixFamily(ctx, c.Pods, 20*time.Second, true); !m.OK() {
		t.Fatalf("failing pairs: %v\n%s", m.Failed(), m)
	}
}

// A Node that lacks a family's podCIDR is waited for, and the wait says
// which family is missing.
func TestWaitPodCIDRsNamesTheMissingFamily(t *testing.T) {
	c := New(t, Options{Prefix: "ovlCH", Nodes: 1, NetConf: dualStackNetConf, AssignPodCIDRs: true, NoAgents: true})
	n := c.Lab.Nodes[0]
	ctx := context.Background()
	node, err := c.Admin.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// podCIDRs may not be changed once set: make a second Node with IPv4 only.
	node.ObjectMeta = metav1.ObjectMeta{Name: "node-v4-only"}
	node.Spec.PodCIDRs = node.Spec.PodCIDRs[:1]
	node.Spec.PodCIDR = node.Spec.PodCIDRs[0]
	if _, err := c.Admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = c.WaitPodCIDRs(ctx, &lab.Node{Name: "node-v4-only"}, 300*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "no IPv6 podCIDR yet") {
		t.Fatalf("WaitPodCIDRs of a Node without an IPv6 podCIDR: %v", err)
	}
	if got, err := c.WaitPodCIDRs(ctx, n, time.Second); err != nil || got.IPv4 == (netip.Prefix{}) || got.IPv6 == (netip.Prefix{}) {
		t.Fatalf("WaitPodCIDRs of a dual-stack Node: %s, %v", got, err)
	}
}

func TestSubnets(t *testing.T) {
	v4, v6 := netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")
	if s, err := parsePodCIDRs([]string{v6.String(), v4.String()}); err != nil || s != (Subnets{IPv4: v4, IPv6: v6}) || s.String() != "[10.244.1.0/24 fd00:10:244:1::/64]" {
		t.Errorf("parsePodCIDRs(v6, v4) = %s, %v", s, err)
	}
	for _, bad := range [][]string{{"10.244.1.0/24", "10.244.2.0/24"}, {"nonsense"}} {
		if _, err := parsePodCIDRs(bad); err == nil {
			t.Errorf("parsePodCIDRs(%q) accepted", bad)
		}
	}
	dual, _ := netconf.Parse([]byte(dualStackNetConf))
	if m := (Subnets{IPv4: v4}).missing(dual); m != "IPv6" {
		t.Errorf("missing of IPv4 only in a dual-stack cluster: %q", m)
	}
	if m := (Subnets{}).missing(dual); m != "IPv4 and IPv6" {
		t.Errorf("missing of none: %q", m)
	}

	n := &lab.Node{Name: "node-1", SubnetEnv: filepath.Join(t.TempDir(), "subnet.env")}
	for _, c := range []struct {
		env     string
		want    Subnets
		wantErr string
	}{
		{env: "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n",
			want: Subnets{IPv4: v4, IPv6: v6}},
		{env: "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1450\n", want: Subnets{IPv6: v6}},
		{env: "FLANNEL_SUBNET=10.244.1.1/24\n", want: Subnets{IPv4: v4}},
		{env: "FLANNEL_MTU=1450\n", wantErr: "no FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET"},
		{env: "FLANNEL_IPV6_SUBNET=10.244.1.1/24\n", wantErr: "FLANNEL_IPV6_SUBNET of node-1"},
	} {
		if err := os.WriteFile(n.SubnetEnv, []byte(c.env), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := SubnetsOf(n)
		if c.wantErr == "" && (err != nil || got != c.want) || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
			t.Errorf("SubnetsOf(%q) = %s, %v; want %s, an error saying %q", c.env, got, err, c.want, c.wantErr)
		}
	}
}

// The harness takes IPv6-only and dual-stack files (netconf.Parse, not the
// daemon's Load) and derives node IPAM from them.
func TestPrepareFamilies(t *testing.T) {
	c, err := Prepare(Options{Prefix: "ovlCH", NetConf: ipv6OnlyNetConf})
	if err != nil {
		t.Fatal(err)
	}
	if c.Net.EnableIPv4 || !c.Net.EnableIPv6 || !slices.Equal(c.networks(), []netip.Prefix{netip.MustParsePrefix("fd00:10:244::/56")}) {
		t.Errorf("IPv6 only: IPv4 %v, IPv6 %v, networks %v", c.Net.EnableIPv4, c.Net.EnableIPv6, c.networks())
	}
	got, err := c.AssignedPodCIDRs(&lab.Node{Name: "node-3", Index: 3})
	if want := netip.MustParsePrefix("fd00:10:244:30::/60"); err != nil || got != (Subnets{IPv6: want}) {
		t.Errorf("AssignedPodCIDRs(node-3) = %s, %v; want %s only", got, err, want)
	}
	if c, err = Prepare(Options{Prefix: "ovlCH", NetConf: dualStackNetConf}); err != nil {
		t.Fatal(err)
	}
	got, err = c.AssignedPodCIDRs(&lab.Node{Name: "node-2", Index: 2})
	if want := (Subnets{IPv4: netip.MustParsePrefix("10.244.2.0/24"), IPv6: netip.MustParsePrefix("fd00:10:244:2::/64")}); err != nil || got != want {
		t.Errorf("AssignedPodCIDRs(node-2) = %s, %v; want %s", got, err, want)
	}
}
