package e2e

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
	for _, backend := range []string{"vxlan", "host-gw", "udp"} {
		t.Run(backend, func(t *testing.T) {
			start := time.Now()
			c := newCluster(t, clusterOptions{
				Nodes: 4, NetConf: netConf(backend), CNIPods: true,
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
				if dev := devices[want]; dev != "" {
					if _, err := n.Exec(context.Background(), "ip", "link", "show", dev); err != nil {
						t.Errorf("%s (%s): no %s: %v", n.Name, want, dev, err)
					}
				}
			}
			t.Logf("%s: published:\n%s", backend, flannelAnnotations(t, c))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			m := lab.CheckMatrix(ctx, c.Pods, 30*time.Second)
			pairs := len(c.Pods) * (len(c.Pods) - 1)
			if pairs != 12 {
				t.Fatalf("%d pods, %d pairs; want 4 pods, 12 pairs", len(c.Pods), pairs)
			}
			if failed := m.Failed(); len(failed) > 0 {
				for _, n := range c.Lab.Nodes {
					t.Logf("%s", nodeNetworkState(n))
				}
				t.Fatalf("%s: %d of %d pairs reach each other:\n%s", backend, pairs-len(failed), pairs, m)
			}
			t.Logf("%s: %d of %d pairs reach each other (overlayd node-1, node-2; flanneld node-3, node-4), %s",
				backend, pairs, pairs, time.Since(start).Round(time.Millisecond))
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
		{"ip", "-4", "addr", "show"},
		{"ip", "route", "show"},
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
