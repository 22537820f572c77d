package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/overlayd/overlayd/backend/wireguard"
	harness "github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/lab"
)

const clusterCIDR6 = "fd00:10:244::/56"

// netConfDual is a dual-stack net-conf.json for the backend.
func netConfDual(backend string) string {
	return fmt.Sprintf(`{"Network": %q, "EnableIPv6": true, "IPv6Network": %q, "Backend": {"Type": %q}}`, clusterCIDR, clusterCIDR6, backend)
}

// netConfIPv6Only is an IPv6-only net-conf.json for the backend.
func netConfIPv6Only(backend string) string {
	return fmt.Sprintf(`{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": %q, "Backend": {"Type": %q}}`, clusterCIDR6, backend)
}

// IPv6 breakages: what an operator (or another agent) does to the IPv6
// half of a node's state by hand.
var (
	route6Deleted = breakage{"IPv6 peer route deleted", func(c *cluster, n *lab.Node, p peerLease) {
		run(c.t, n, "ip", "-6", "route", "del", p.subnet6.String())
	}, true}
	fdb6Deleted = breakage{"IPv6 FDB entry deleted", func(c *cluster, n *lab.Node, p peerLease) {
		run(c.t, n, "bridge", "fdb", "del", p.vtepMAC6, "dev", p.vxlanDevice6(), "dst", p.publicIP6.String(), "self")
	}, true}
	neigh6Deleted = breakage{"IPv6 neighbour entry deleted", func(c *cluster, n *lab.Node, p peerLease) {
		run(c.t, n, "ip", "-6", "neigh", "del", p.subnet6.Addr().String(), "dev", p.vxlanDevice6())
	}, true}
	device6Deleted = breakage{"IPv6 vxlan device deleted", func(c *cluster, n *lab.Node, p peerLease) {
		run(c.t, n, "ip", "link", "del", p.vxlanDevice6())
	}, true}
)

// TestDualStack: on vxlan and host-gw, with an IPv4 and an IPv6 underlay,
// three nodes with two dual-stack pods each reach each other over both
// families; the kernel holds exactly what both families' leases call for;
// the IPv6 routes, neighbours, FDB entries and device deleted by hand are
// repaired; a deleted node goes from both families; and a peer with an IPv6
// podCIDR but no IPv6 address is skipped for IPv6 (logged and counted) and
// kept for IPv4, with nobody else's connectivity lost.
func TestDualStack(t *testing.T) {
	for _, tc := range []struct {
		backend   string
		breakages []breakage
	}{
		{"vxlan", []breakage{route6Deleted, fdb6Deleted, neigh6Deleted, device6Deleted}},
		{"host-gw", []breakage{route6Deleted}},
		{"wireguard", []breakage{route6Deleted, wireGuardDevice6Deleted}},
	} {
		t.Run(tc.backend, func(t *testing.T) {
			c := testBackendConf(t, netConfDual(tc.backend), tc.breakages...)
			for _, p := range c.Pods {
				if !p.IP.IsValid() || !p.IP6.IsValid() {
					t.Fatalf("pod %s is not dual-stack: %s %s", p.Name, p.IP, p.IP6)
				}
			}
			pairs := len(c.Pods) * (len(c.Pods) - 1)
			t.Logf("%s dual-stack: %d pods on 3 nodes, all %d ordered pairs reached each other over IPv4 and over IPv6", tc.backend, len(c.Pods), pairs)
			pods := append(c.PodsOn(c.node(0)), c.PodsOn(c.node(1))...)
			t.Run("peer without an IPv6 address", func(t *testing.T) { peerWithoutIPv6(t, c, tc.backend, pods) })
		})
	}
}

// peerWithoutIPv6 registers a Node that has both podCIDRs but published
// only IPv4: every agent skips its IPv6 half, counts it and programs its
// IPv4 half; the pods keep reaching each other over both families.
func peerWithoutIPv6(t *testing.T, c *cluster, backend string, pods []*lab.Pod) {
	ctx := context.Background()
	n1 := c.node(0)
	before := metricValue(t, c, n1, `overlayd_peers_skipped_total{reason="missing_family"}`)
	data := map[string]string{"vxlan": `{"VNI":1,"VtepMAC":"0a:58:c6:12:00:fa"}`, "host-gw": "null",
		"wireguard": `{"PublicKey":"` + ghostKey + `","Port":51820}`}[backend]
	ghost := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "ghost", Annotations: map[string]string{
			annotationPrefix + "kube-subnet-manager": "true",
			annotationPrefix + "backend-type":        backend,
			annotationPrefix + "backend-data":        data,
			annotationPrefix + "public-ip":           "198.18.0.250",
		}},
		Spec: corev1.NodeSpec{PodCIDR: "10.244.200.0/24", PodCIDRs: []string{"10.244.200.0/24", "fd00:10:244:c8::/64"}},
	}
	if _, err := c.Admin.CoreV1().Nodes().Create(ctx, ghost, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer c.Admin.CoreV1().Nodes().Delete(ctx, ghost.Name, metav1.DeleteOptions{})
	harness.Eventually(t, 30*time.Second, n1.Name+" counts the ghost's IPv6 half skipped", func() (bool, string) {
		v := metricValue(t, c, n1, `overlayd_peers_skipped_total{reason="missing_family"}`)
		return v > before, fmt.Sprint(v)
	})
	harness.Eventually(t, 30*time.Second, n1.Name+" programs the ghost's IPv4 half", func() (bool, string) {
		return hasRoute(t, n1, "10.244.200.0/24"), "no route to 10.244.200.0/24"
	})
	if hasRoute6(t, n1, "fd00:10:244:c8::/64") {
		t.Errorf("%s routes the ghost's IPv6 podCIDR, which has no address to reach", n1.Name)
	}
	if log := c.Agents[n1.Name].Log(); !containsAll(log, "ghost", "publishes no IPv6 subnet or public address") {
		t.Errorf("the skip is not logged with its reason")
	}
	c.requireFullMesh(pods)
}

func hasRoute6(t *testing.T, n *lab.Node, dst string) bool {
	t.Helper()
	for _, r := range ipJSON[ipRoute](t, n, "-6", "route", "show", "proto", "79") {
		if r.Dst == dst {
			return true
		}
	}
	return false
}

// TestIPv6Only: "EnableIPv4": false on vxlan and host-gw: pods have only
// IPv6 addresses and reach each other; the kernel holds no IPv4 state of
// overlayd's, exactly the IPv6 state the leases call for, and the IPv6
// route deleted by hand is repaired.
func TestIPv6Only(t *testing.T) {
	for _, backend := range []string{"vxlan", "host-gw", "wireguard"} {
		t.Run(backend, func(t *testing.T) {
			breakages := []breakage{route6Deleted}
			switch backend {
			case "vxlan":
				breakages = append(breakages, fdb6Deleted, device6Deleted)
			case "wireguard":
				breakages = append(breakages, wireGuardDevice6Deleted)
			}
			c := testBackendConf(t, netConfIPv6Only(backend), breakages...)
			for _, p := range c.Pods {
				if p.IP.IsValid() || !p.IP6.IsValid() {
					t.Fatalf("pod %s is not IPv6-only: %s %s", p.Name, p.IP, p.IP6)
				}
			}
			for _, n := range c.Lab.Nodes[:2] {
				if rs := ipJSON[ipRoute](t, n, "route", "show", "proto", "79"); len(rs) != 0 {
					t.Errorf("%s: IPv4 routes of overlayd's in an IPv6-only cluster: %+v", n.Name, rs)
				}
				if backend == "vxlan" && !linkGone(t, n, "overlay.1") {
					t.Errorf("%s: an IPv4 vxlan device in an IPv6-only cluster", n.Name)
				}
				if backend == "wireguard" && !linkGone(t, n, wireguard.DeviceName) {
					t.Errorf("%s: an IPv4 WireGuard device in an IPv6-only cluster", n.Name)
				}
			}
		})
	}
}

// TestRestartLossIPv6: a 100/s ping over IPv6 (and one over IPv4) between
// dual-stack pods while the agents restart, by SIGTERM and by SIGKILL:
// the in-kernel datapaths lose nothing on either family.
func TestRestartLossIPv6(t *testing.T) {
	for _, backend := range []string{"vxlan", "host-gw"} {
		t.Run(backend, func(t *testing.T) {
			c := newCluster(t, clusterOptions{Nodes: 2, NetConf: netConfDual(backend)})
			c.requireFullMesh(c.Pods)
			src, dst := c.PodsOn(c.node(0))[0], c.PodsOn(c.node(1))[0]
			restartLoss(t, c, []netip.Addr{dst.IP6, dst.IP}, src, 0)
		})
	}
}

// TestSwitchBackendsLiveDualStack: vxlan -> host-gw -> vxlan on a running
// dual-stack cluster, pinging over both families: at most 1% lost, every
// node's kernel state exactly what the leases call for after each step
// (the old backend's IPv4 and IPv6 state gone).
func TestSwitchBackendsLiveDualStack(t *testing.T) {
	c := newCluster(t, clusterOptions{Nodes: 3, NetConf: netConfDual("vxlan")})
	c.requireFullMesh(c.Pods)
	c.requireKernelStateMatchesLeases()
	step := func(backend string) switchStep {
		return switchStep{name: backend, conf: netConfDual(backend), applied: func(l peerLease) bool { return l.backendType == backend }}
	}
	sent, lost := rollOut(t, c, step("host-gw"), step("vxlan"))
	ratio := float64(lost) / float64(sent)
	t.Logf("dual-stack vxlan -> host-gw -> vxlan: %d of %d pings (both families) lost (%.3f%%)", lost, sent, 100*ratio)
	if ratio > 0.01 {
		t.Fatalf("lost %.3f%% of pings across the switches; at most 1%% allowed", 100*ratio)
	}
}
