package e2e

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	harness "github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/lab"
)

// annotateNode sets (or, with "", removes) annotations on a Node, as an
// administrator does with kubectl annotate.
func (c *cluster) annotateNode(n *lab.Node, a map[string]string) {
	c.t.Helper()
	values := map[string]any{}
	for k, v := range a {
		values[k] = v
		if v == "" {
			values[k] = nil
		}
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": values}})
	if _, err := c.Admin.CoreV1().Nodes().Patch(context.Background(), n.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

// fdbDsts are the destinations of a node's permanent FDB entries.
func fdbDsts(t *testing.T, n *lab.Node, dev string) []string {
	t.Helper()
	var out []string
	raw, err := n.Exec(context.Background(), "bridge", "-j", "fdb", "show", "dev", dev)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(raw, lab.DumpInterrupted) {
		return nil // changed while dumped: the caller's next look reads again
	}
	var entries []fdbEntry
	if err := json.Unmarshal([]byte(raw), &entries); err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.State == "permanent" && e.Dst != "" {
			out = append(out, e.Dst)
		}
	}
	return out
}

// TestPublicAddressAnnotations: flanneld's public address annotations on a
// Node (public-ip-overwrite, node-public-ip), with flanneld's precedence,
// applied while the agents run: peers follow, pods keep talking. A peer
// follows such a change with a pass that applies the changed peer alone
// (reconcile's changed-peers pass), and its kernel is then exactly what
// the leases call for.
func TestPublicAddressAnnotations(t *testing.T) {
	c := newCluster(t, clusterOptions{Nodes: 3})
	n1, n2 := c.node(0), c.node(1)
	pods := c.Pods
	c.requireFullMesh(pods)

	// A second address of node-1's own, on its underlay.
	second := netip.AddrFrom4([4]byte{198, 18, 0, byte(200 + n1.Index)})
	run(t, n1, "ip", "addr", "add", second.String()+"/24", "dev", "eth0")
	const p = "overlayd.io/"
	published := func() netip.Addr {
		for _, l := range c.leases() {
			if l.node == n1.Name {
				return l.publicIP
			}
		}
		return netip.Addr{}
	}
	peersSendTo := func(what string, want netip.Addr) {
		t.Helper()
		harness.Eventually(t, 30*time.Second, what, func() (bool, string) {
			got := fdbDsts(t, n2, "overlay.1")
			return published() == want && strings.Contains(strings.Join(got, " "), want.String()), "published " + published().String() + ", node-2's FDB " + strings.Join(got, " ")
		})
		c.requireFullMesh(pods)
	}

	// public-ip-overwrite: only what peers are told.
	c.annotateNode(n1, map[string]string{p + "public-ip-overwrite": second.String()})
	peersSendTo("peers sending to the overwrite address", second)
	if link := run2(t, n1, "ip", "-d", "link", "show", "overlay.1"); !strings.Contains(link, "local "+n1.IP.String()) {
		t.Errorf("the overwrite changed node-1's tunnel source:\n%s", link)
	}

	const changedRuns = "overlayd_reconcile_changed_peer_runs_total"
	if n := metricValue(t, c, n2, changedRuns); n < 1 {
		t.Errorf("node-2 followed node-1's change in %v changed-peer passes, want at least one", n)
		t.Log(c.Agents[n2.Name].Log())
	}
	c.requireKernelStateMatchesLeases()

	// Removed: back to the interface's address.
	c.annotateNode(n1, map[string]string{p + "public-ip-overwrite": ""})
	peersSendTo("peers back on the interface address", n1.IP)

	// node-public-ip stands in for --public-ip: the address peers send to
	// and, with no interface flag, the tunnel's source.
	c.annotateNode(n1, map[string]string{p + "node-public-ip": second.String()})
	peersSendTo("peers sending to node-public-ip", second)
	harness.Eventually(t, 30*time.Second, "node-1's tunnel on node-public-ip", func() (bool, string) {
		link := run2(t, n1, "ip", "-d", "link", "show", "overlay.1")
		return strings.Contains(link, "local "+second.String()), link
	})

	// Both: public-ip-overwrite wins for what peers are told.
	c.annotateNode(n1, map[string]string{p + "node-public-ip": "", p + "public-ip-overwrite": n1.IP.String()})
	peersSendTo("the overwrite winning over node-public-ip", n1.IP)

	// A malformed value is ignored, saying so; nothing changes.
	c.annotateNode(n1, map[string]string{p + "public-ip-overwrite": "198.18.0.999"})
	harness.Eventually(t, 30*time.Second, "a warning about the malformed annotation", func() (bool, string) {
		return strings.Contains(c.Agents[n1.Name].Log(), "ignoring malformed public address annotations"), ""
	})
	if got := published(); got != n1.IP {
		t.Errorf("published %s after a malformed overwrite, want %s", got, n1.IP)
	}
	c.requireFullMesh(pods)
}

// run2 runs a command inside the node and returns its output.
func run2(t *testing.T, n *lab.Node, argv ...string) string {
	t.Helper()
	out, err := n.Exec(context.Background(), argv...)
	if err != nil {
		t.Fatalf("%s on %s: %v\n%s", strings.Join(argv, " "), n.Name, err, out)
	}
	return out
}
