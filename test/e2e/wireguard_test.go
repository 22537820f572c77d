package e2e

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/overlayd/overlayd/backend/wireguard"
	harness "github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/lab"
)

// publishedKeys are the WireGuard public keys the nodes publish (IPv4
// backend data), by node.
func (c *cluster) publishedKeys() map[string]string {
	c.t.Helper()
	all, err := c.Leases(context.Background())
	if err != nil {
		c.t.Fatal(err)
	}
	out := map[string]string{}
	for _, a := range all {
		var d wireguard.Data
		if a.BackendType == wireguard.Type && json.Unmarshal([]byte(a.BackendData), &d) == nil {
			out[a.Node] = d.PublicKey
		}
	}
	return out
}

// wireGuardPeers reads the peers' public keys of the node's userspace
// WireGuard device through wgctrl, as `wg show` would.
func wireGuardPeers(n *lab.Node) ([]string, error) {
	var keys []string
	err := n.Do(func() error {
		c, err := wgctrl.New()
		if err != nil {
			return err
		}
		defer c.Close()
		name, err := wireguard.SocketName(wireguard.DeviceName)
		if err != nil {
			return err
		}
		dev, err := c.Device(name)
		if err != nil {
			return err
		}
		for _, p := range dev.Peers {
			keys = append(keys, p.PublicKey.String())
		}
		return nil
	})
	slices.Sort(keys)
	return keys, err
}

// requireWireGuardPeersMatchLeases waits until every node's device has
// exactly the keys the other nodes publish: no stale key, none missing.
func (c *cluster) requireWireGuardPeersMatchLeases() {
	c.t.Helper()
	keys := c.publishedKeys()
	for _, n := range c.Lab.Nodes {
		if _, live := keys[n.Name]; !live || !c.Agents[n.Name].Running() {
			continue
		}
		var want []string
		for node, k := range keys {
			if node != n.Name {
				want = append(want, k)
			}
		}
		slices.Sort(want)
		harness.Eventually(c.t, 30*time.Second, n.Name+"'s WireGuard peers are the published keys", func() (bool, string) {
			have, err := wireGuardPeers(n)
			if err != nil {
				return false, err.Error()
			}
			return slices.Equal(have, want), fmt.Sprintf("device has %v, peers publish %v", have, want)
		})
	}
}

// wireGuardDeviceDeleted deletes the node's WireGuard device (a TUN here):
// the agent creates it again and runs wireguard-go on the new one.
var wireGuardDeviceDeleted = breakage{"WireGuard device deleted", func(c *cluster, n *lab.Node, _ peerLease) {
	run(c.t, n, "ip", "link", "del", wireguard.DeviceName)
}, true}

// wireGuardDevice6Deleted is wireGuardDeviceDeleted for the IPv6 device
// (Mode separate).
var wireGuardDevice6Deleted = breakage{"IPv6 WireGuard device deleted", func(c *cluster, n *lab.Node, _ peerLease) {
	run(c.t, n, "ip", "link", "del", wireguard.DeviceName6)
}, true}

// ghostKey is a public key no node has, for a peer that runs no agent.
const ghostKey = "x5Y7gbQ1MRLw1lJCa9NixJ6C2DdV8SYAhpvUCwgtRHs="

// TestWireGuard: the common backend checks (testBackend) on wireguard
// (userspace here: this kernel has no WireGuard), with the device deleted
// among the breakages; each device has exactly its peers' keys;
// the datapath is reported; a node whose key file is removed publishes a
// new key at its restart, and every peer follows, keeping no old key.
func TestWireGuard(t *testing.T) {
	c := testBackendConf(t, netConf("wireguard"), routeDeleted, wireGuardDeviceDeleted, underlayFlapped)
	c.requireWireGuardPeersMatchLeases()

	n1 := c.node(0)
	if _, body, err := c.health(n1, "/readyz"); err != nil || !strings.Contains(body, "wireguard: overlay-wg ") {
		t.Errorf("/readyz does not report the WireGuard datapath (%v):\n%s", err, body)
	} else {
		t.Logf("/readyz of %s:\n%s", n1.Name, body)
	}
	if !strings.Contains(c.Agents[n1.Name].Log(), "WireGuard device configured") {
		t.Errorf("%s: no log line names the WireGuard datapath", n1.Name)
	}
	userspace := metricValue(t, c, n1, `overlayd_wireguard_datapath{datapath="userspace",device="overlay-wg"}`)
	kernelDP := metricValue(t, c, n1, `overlayd_wireguard_datapath{datapath="kernel",device="overlay-wg"}`)
	t.Logf("overlayd_wireguard_datapath on %s: userspace %v, kernel %v", n1.Name, userspace, kernelDP)
	if userspace+kernelDP != 1 {
		t.Errorf("overlayd_wireguard_datapath: userspace %v, kernel %v; want exactly one 1", userspace, kernelDP)
	}
	for _, n := range c.Lab.Nodes[:2] {
		st, err := os.Stat(harness.WireGuardKeyFile(n))
		if err != nil || st.Mode().Perm() != 0o400 {
			t.Fatalf("%s: key file: %v (mode %v); want mode 0400", n.Name, err, st.Mode())
		}
		if log := c.Agents[n.Name].Log(); strings.Contains(log, readKey(t, n)) {
			t.Fatalf("%s: the agent logged its private key", n.Name)
		}
	}

	t.Run("peer without a key", func(t *testing.T) { keylessPeer(t, c, n1) })

	t.Run("key file removed and the agent restarted", func(t *testing.T) {
		n3 := c.node(1) // node 3 has been deleted from the API
		old := c.publishedKeys()[n3.Name]
		if err := c.Agents[n3.Name].Stop(); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(harness.WireGuardKeyFile(n3)); err != nil {
			t.Fatal(err)
		}
		if err := c.Agents[n3.Name].Start(); err != nil {
			t.Fatal(err)
		}
		c.waitReady(n3)
		harness.Eventually(t, 30*time.Second, n3.Name+" publishes a new key", func() (bool, string) {
			k := c.publishedKeys()[n3.Name]
			return k != "" && k != old, k
		})
		c.requireWireGuardPeersMatchLeases() // the old key is on no peer
		c.requireFullMesh(append(c.PodsOn(n1), c.PodsOn(n3)...))
	})
}

// keylessPeer registers a Node that publishes wireguard without a usable
// key: every agent skips it and counts it (no_wireguard_key), gives its
// subnet no route of its own, and a ping from a pod to it, marked, never
// crosses the underlay in the clear: the cluster network's route takes it
// into the WireGuard device, which has no peer for it.
func keylessPeer(t *testing.T, c *cluster, n1 *lab.Node) {
	ctx := context.Background()
	const skipped = `overlayd_peers_skipped_total{reason="no_wireguard_key"}`
	before := metricValue(t, c, n1, skipped)
	ghost := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "keyless", Annotations: map[string]string{
			annotationPrefix + "kube-subnet-manager": "true",
			annotationPrefix + "backend-type":        wireguard.Type,
			annotationPrefix + "backend-data":        `{"PublicKey":"","Port":51820}`,
			annotationPrefix + "public-ip":           "198.18.0.250",
		}},
		Spec: corev1.NodeSpec{PodCIDR: "10.244.201.0/24", PodCIDRs: []string{"10.244.201.0/24"}},
	}
	if _, err := c.Admin.CoreV1().Nodes().Create(ctx, ghost, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer c.Admin.CoreV1().Nodes().Delete(ctx, ghost.Name, metav1.DeleteOptions{})
	harness.Eventually(t, 30*time.Second, n1.Name+" counts the keyless peer skipped", func() (bool, string) {
		v := metricValue(t, c, n1, skipped)
		return v > before, fmt.Sprint(v)
	})
	if hasRoute(t, n1, "10.244.201.0/24") {
		t.Fatalf("%s routes the keyless peer's subnet", n1.Name)
	}
	// Without the route for the cluster network its packets would follow the
	// node's default route, onto the underlay.
	if out, err := n1.Exec(ctx, "ip", "route", "get", "10.244.201.2"); err != nil || !strings.Contains(out, "dev "+wireguard.DeviceName) {
		t.Fatalf("%s does not route the keyless peer's subnet into %s (%v): %s", n1.Name, wireguard.DeviceName, err, out)
	}
	capture, err := n1.StartCapture("eth0", marker)
	if err != nil {
		t.Fatal(err)
	}
	src := c.PodsOn(n1)[0]
	out, err := src.Exec(ctx, "ping", "-c", "20", "-i", "0.02", "-W", "1", "-p", hex.EncodeToString(marker), "10.244.201.2")
	frames, matches, cerr := capture.Stop()
	if cerr != nil {
		t.Fatal(cerr)
	}
	t.Logf("20 marked pings to the keyless peer's subnet: %d frames on %s's underlay, %d with the marker", frames, n1.Name, matches)
	if err == nil {
		t.Fatalf("the keyless peer's subnet answered:\n%s", out)
	}
	if matches != 0 {
		t.Fatalf("%d frames to the keyless peer crossed the underlay in the clear", matches)
	}
}

func readKey(t *testing.T, n *lab.Node) string {
	data, err := os.ReadFile(harness.WireGuardKeyFile(n))
	if err != nil {
		t.Fatal(err)
	}
	k, err := wgtypes.ParseKey(string(data))
	if err != nil {
		t.Fatal(err)
	}
	return k.String()
}

// marker is the payload pattern of the pings whose traffic is captured.
var marker = []byte("overlayd-marker!")

// TestWireGuardEncrypts captures the underlay of a node while its pod pings
// a pod on another node with a marker payload (ping -p): under vxlan the
// marker crosses the underlay, under wireguard never, also not while the
// agents restart (SIGKILL) or the nodes change their keys.
func TestWireGuardEncrypts(t *testing.T) {
	for _, tc := range []struct {
		backend string
		clear   bool
	}{{"vxlan", true}, {"wireguard", false}} {
		t.Run(tc.backend, func(t *testing.T) {
			c := newCluster(t, clusterOptions{Nodes: 2, NetConf: netConf(tc.backend)})
			c.requireFullMesh(c.Pods)
			frames, matches := markedPings(t, c, 50, nil)
			t.Logf("%s: 50 pings with the marker; %d frames on %s's underlay, %d carrying the marker", tc.backend, frames, c.node(0).Name, matches)
			switch {
			case frames < 2*50:
				t.Fatalf("the capture saw %d frames for 50 pings and their replies: it missed the traffic", frames)
			case tc.clear && matches < 2*50:
				t.Fatalf("under %s %d frames carried the marker; want the 50 pings and replies, in the clear", tc.backend, matches)
			case !tc.clear && matches != 0:
				t.Fatalf("under %s %d frames carried the marker in the clear", tc.backend, matches)
			}
			if tc.clear {
				return
			}
			for _, step := range []struct {
				name string
				do   func(n *lab.Node)
			}{
				{"agents killed and restarted", func(n *lab.Node) { restartAgent(t, c, n, syscall.SIGKILL) }},
				{"every node's key changed in turn", func(n *lab.Node) {
					if err := c.Agents[n.Name].Stop(); err != nil {
						t.Fatal(err)
					}
					if err := os.Remove(harness.WireGuardKeyFile(n)); err != nil {
						t.Fatal(err)
					}
					if err := c.Agents[n.Name].Start(); err != nil {
						t.Fatal(err)
					}
					c.waitReady(n)
				}},
			} {
				frames, matches := markedPings(t, c, 300, func() {
					for _, n := range c.Lab.Nodes {
						step.do(n)
					}
				})
				t.Logf("%s: 300 pings with the marker at 100/s; %d frames on the underlay, %d carrying the marker", step.name, frames, matches)
				if matches != 0 {
					t.Fatalf("%s: %d frames carried the marker in the clear", step.name, matches)
				}
				c.requireFullMesh(c.Pods)
			}
		})
	}
}

// markedPings pings from the first node's pod to the second's, count times
// at 50/s (100/s with during) with the marker as payload, while capturing
// the first node's underlay, and runs during meanwhile; it returns the
// frames captured and those carrying the marker.
func markedPings(t *testing.T, c *cluster, count int, during func()) (frames, matches int) {
	t.Helper()
	src, dst := c.PodsOn(c.node(0))[0], c.PodsOn(c.node(1))[0]
	capture, err := c.node(0).StartCapture("eth0", marker)
	if err != nil {
		t.Fatal(err)
	}
	interval := "0.02"
	if during != nil {
		interval = "0.01"
	}
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := src.Exec(context.Background(), "ping", "-c", fmt.Sprint(count), "-i", interval, "-W", "1", "-p", hex.EncodeToString(marker), dst.IP.String())
		done <- result{out, err}
	}()
	if during != nil {
		during()
	}
	r := <-done
	frames, matches, cerr := capture.Stop()
	if cerr != nil {
		t.Fatal(cerr)
	}
	if r.err != nil && during == nil { // pings lost while agents restart are expected
		t.Fatalf("ping: %v\n%s", r.err, r.out)
	}
	return frames, matches
}

// TestSwitchWireGuardLive: vxlan → wireguard → vxlan on a running cluster
// under 100/s pings, at most 1% lost, nothing of wireguard left behind.
func TestSwitchWireGuardLive(t *testing.T) {
	c := newCluster(t, clusterOptions{Nodes: 3, NetConf: netConf("vxlan")})
	c.requireFullMesh(c.Pods)
	c.requireKernelStateMatchesLeases()
	wg := backendStep("wireguard")
	wg.applied = func(l peerLease) bool {
		if l.backendType != "wireguard" {
			return false
		}
		c.requireWireGuardPeersMatchLeases()
		return true
	}
	sent, lost := rollOut(t, c, wg, backendStep("vxlan"))
	ratio := float64(lost) / float64(sent)
	t.Logf("vxlan -> wireguard -> vxlan: %d of %d pings lost (%.3f%%)", lost, sent, 100*ratio)
	if ratio > 0.01 {
		t.Fatalf("lost %.3f%% of pings across the switches; at most 1%% allowed", 100*ratio)
	}
	// The userspace devices' control sockets go with them.
	for _, n := range c.Lab.Nodes {
		var sock string
		if err := n.Do(func() (err error) { sock, err = wireguard.SocketName(wireguard.DeviceName); return }); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join("/var/run/wireguard", sock+".sock")); err == nil {
			t.Errorf("%s: the control socket %s.sock is left behind", n.Name, sock)
		}
	}
}
