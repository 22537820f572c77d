package controlplane

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TestNodeIPAMFamilies: kube-controller-manager's node IPAM gives every
// registered Node one podCIDR of each family of the cluster CIDR, of the
// family's mask size, inside the family's network, distinct between Nodes,
// with spec.podCIDR the first.
func TestNodeIPAMFamilies(t *testing.T) {
	for _, c := range []struct {
		name, clusterCIDR string
		maskV4, maskV6    int
		want              []netip.Prefix // the networks, in spec.podCIDRs order
		wantBits          []int
	}{
		{"dual-stack", "10.244.0.0/16,fd00:10:244::/56", 24, 64,
			[]netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")}, []int{24, 64}},
		{"IPv6 first", "fd00:10:244::/56,10.244.0.0/16", 25, 0, // the IPv6 mask defaults to /64
			[]netip.Prefix{netip.MustParsePrefix("fd00:10:244::/56"), netip.MustParsePrefix("10.244.0.0/16")}, []int{64, 25}},
		{"IPv6 only", "fd00:10:244::/56", 0, 60,
			[]netip.Prefix{netip.MustParsePrefix("fd00:10:244::/56")}, []int{60}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cp := StartT(t, Options{ControllerManager: true, ClusterCIDR: c.clusterCIDR, NodeCIDRMaskSize: c.maskV4, NodeCIDRMaskSizeIPv6: c.maskV6})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			admin := kubernetes.NewForConfigOrDie(cp.Config(Admin))
			seen := map[netip.Prefix]string{}
			for i := range 3 {
				name := fmt.Sprintf("ipam-%d", i)
				if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
				node := waitPodCIDRs(ctx, t, admin, name)
				if len(node.Spec.PodCIDRs) != len(c.want) || node.Spec.PodCIDR != node.Spec.PodCIDRs[0] {
					t.Fatalf("%s: podCIDR %q podCIDRs %q; want %d, the first as podCIDR", name, node.Spec.PodCIDR, node.Spec.PodCIDRs, len(c.want))
				}
				for j, s := range node.Spec.PodCIDRs {
					p, err := netip.ParsePrefix(s)
					if err != nil || !c.want[j].Contains(p.Addr()) || p.Bits() != c.wantBits[j] {
						t.Errorf("%s: podCIDRs[%d] = %s (%v); want a /%d in %s", name, j, s, err, c.wantBits[j], c.want[j])
					}
					if other, dup := seen[p]; dup {
						t.Errorf("%s and %s both got %s", other, name, p)
					}
					seen[p] = name
				}
			}
		})
	}
}

func waitPodCIDRs(ctx context.Context, t *testing.T, c kubernetes.Interface, name string) *corev1.Node {
	t.Helper()
	for {
		node, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil && len(node.Spec.PodCIDRs) > 0 {
			return node
		}
		select {
		case <-ctx.Done():
			t.Fatalf("Node %s got no podCIDRs: %v (last error %v)", name, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestParseClusterCIDR(t *testing.T) {
	for _, c := range []struct {
		in, want, wantErr string
	}{
		{in: ""},
		{in: "10.244.0.0/16", want: "[10.244.0.0/16]"},
		{in: "fd00:10:244::/56", want: "[fd00:10:244::/56]"},
		{in: "10.244.0.0/16,fd00:10:244::/56", want: "[10.244.0.0/16 fd00:10:244::/56]"},
		{in: "fd00:10:244::/56, 10.244.0.0/16", want: "[fd00:10:244::/56 10.244.0.0/16]"},
		{in: "10.244.0.0/16,10.245.0.0/16", wantErr: "two networks of one family"},
		{in: "10.244.0.0/16,fd00::/56,fd01::/56", wantErr: "want one network or one of each family"},
		{in: "10.244.1.0/16", wantErr: "not a masked network"},
		{in: "nonsense", wantErr: "not a masked network"},
	} {
		cidrs, err := parseClusterCIDR(c.in)
		got := ""
		if cidrs != nil {
			got = fmt.Sprint(cidrs)
		}
		if c.wantErr == "" && (err != nil || got != c.want) || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
			t.Errorf("parseClusterCIDR(%q) = %s, %v; want %s, an error saying %q", c.in, got, err, c.want, c.wantErr)
		}
	}
	if _, err := Start(Options{ControllerManager: true, ClusterCIDR: "10.244.0.0/16,10.245.0.0/16"}); err == nil || !strings.Contains(err.Error(), "ClusterCIDR") {
		t.Errorf("Start with two IPv4 cluster CIDRs: %v", err)
	}
}
