package wireguard

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"go.uber.org/zap/zaptest"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/subnet"
	"github.com/overlayd/overlayd/test/netnstest"
)

// testNode is a node namespace on a veth underlay with the backend, the
// kernel reconciler and the datapath an agent would run.
type testNode struct {
	t      *testing.T
	ns     string
	h      netns.NsHandle
	node   backend.Node
	b      backend.Backend
	kernel *kernel.Reconciler
	dp     backend.Datapath
}

// newMeshedPair is newPair with each node's peer applied and traffic from
// the first to the second shown to flow.
func newMeshedPair(t *testing.T, conf string) (a, b *testNode) {
	t.Helper()
	nodes := newPair(t, conf)
	a, b = nodes[0], nodes[1]
	a.apply(b)
	b.apply(a)
	if err := a.ping(b); err != nil {
		t.Fatal(err)
	}
	return a, b
}

func newPair(t *testing.T, conf string) [2]*testNode {
	var out [2]*testNode
	for i := range out {
		k := i + 1
		ns, h := netnstest.New(t, "ovlW-", fmt.Sprintf("n%d", k))
		out[i] = &testNode{t: t, ns: ns, h: h}
	}
	netnstest.IP(t, out[0].ns, "link", "add", "u0", "type", "veth", "peer", "name", "u0", "netns", out[1].ns)
	for i, n := range out {
		k := i + 1
		addr := netip.AddrFrom4([4]byte{198, 18, 0, byte(k)})
		netnstest.IP(t, n.ns, "link", "set", "lo", "up")
		netnstest.IP(t, n.ns, "addr", "add", addr.String()+"/24", "dev", "u0")
		netnstest.IP(t, n.ns, "link", "set", "u0", "up")
		n.node = backend.Node{
			Name:    fmt.Sprintf("n%d", k),
			Lease:   subnet.Lease{Node: fmt.Sprintf("n%d", k), Subnet: netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", k)), Attrs: subnet.LeaseAttrs{PublicIP: addr, BackendType: Type}},
			Network: netip.MustParsePrefix("10.244.0.0/16"),
			Underlay: &ip.External{Iface: ip.Interface{Name: "u0", MTU: 1500, Up: true, Addrs: []netip.Prefix{netip.PrefixFrom(addr, 24)}},
				Addr: addr, PublicIP: addr},
		}
		n.newBackend(conf, filepath.Join(t.TempDir(), "wgkey"))
		r, err := kernel.NewReconcilerAt(n.h, zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		n.kernel = r
		dp, err := openDatapath(backend.DatapathEnv{StateDir: t.TempDir(), Log: zaptest.NewLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		n.dp = dp
		t.Cleanup(func() { kernel.InNamespace(n.h, dp.Close) })
	}
	return out
}

// newBackend builds the node's backend with the key file keyFile, and
// publishes its data on its lease.
func (n *testNode) newBackend(conf, keyFile string) {
	n.t.Helper()
	SetKeyFile(keyFile)
	defer SetKeyFile("")
	b, err := New(json.RawMessage(conf))
	if err != nil {
		n.t.Fatal(err)
	}
	n.b = b
	data, err := b.Data(n.node, backend.IPv4)
	if err != nil {
		n.t.Fatal(err)
	}
	n.node.Lease.Attrs.BackendData = data
}

// apply makes the node's kernel and datapath what the backend wants for
// peers, in the order the loop does: links, datapath, the rest.
func (n *testNode) apply(peers ...*testNode) {
	n.t.Helper()
	var st backend.State
	if err := n.b.Local(n.node, &st); err != nil {
		n.t.Fatal(err)
	}
	for _, p := range peers {
		var ps backend.State
		if err := n.b.Peer(n.node, p.node.Lease, &ps); err != nil {
			n.t.Fatalf("peer %s: %v", p.node.Name, err)
		}
		if err := st.Merge(ps); err != nil {
			n.t.Fatal(err)
		}
	}
	if _, err := n.kernel.ApplyLinks(st.Links); err != nil {
		n.t.Fatal(err)
	}
	if err := kernel.InNamespace(n.h, func() error { return n.dp.Ensure(st.Datapath(Type), nil) }); err != nil {
		n.t.Fatal(err)
	}
	if _, _, err := n.kernel.Apply(st.State); err != nil {
		n.t.Fatal(err)
	}
}

// device reads the node's WireGuard device through wgctrl, as the datapath
// sees it.
func (n *testNode) device() *wgtypes.Device {
	n.t.Helper()
	var dev *wgtypes.Device
	err := kernel.InNamespace(n.h, func() error {
		c, err := wgctrl.New()
		if err != nil {
			return err
		}
		defer c.Close()
		name := DeviceName // a kernel device
		if n.dp.(*datapath).user[DeviceName] != nil {
			if name, err = SocketName(DeviceName); err != nil {
				return err
			}
		}
		dev, err = c.Device(name)
		return err
	})
	if err != nil {
		n.t.Fatal(err)
	}
	return dev
}

// ping pings the peer's VTEP address from this node's, through the tunnel.
func (n *testNode) ping(peer *testNode) error {
	src := backend.VTEPAddr(n.node.Lease.Subnet).String()
	dst := backend.VTEPAddr(peer.node.Lease.Subnet).String()
	out, err := exec.Command("ip", "netns", "exec", n.ns, "ping", "-c", "3", "-i", "0.2", "-W", "5", "-I", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s -> %s: %v: %s", src, dst, err, out)
	}
	return nil
}

func (n *testNode) publicKey() wgtypes.Key {
	var d Data
	if err := json.Unmarshal(n.node.Lease.Attrs.BackendData, &d); err != nil {
		n.t.Fatal(err)
	}
	k, err := wgtypes.ParseKey(d.PublicKey)
	if err != nil {
		n.t.Fatal(err)
	}
	return k
}

// The userspace datapath carries traffic both ways, configured through
// wgctrl; a peer's changed key replaces its old one on the device, which
// keeps no stale peer, and traffic flows again.
func TestUserspaceDatapathAndKeyChange(t *testing.T) {
	a, b := newMeshedPair(t, `{"Type":"wireguard","Datapath":"userspace"}`)
	if err := b.ping(a); err != nil {
		t.Fatal(err)
	}
	dev := a.device()
	if len(dev.Peers) != 1 || dev.Peers[0].PublicKey != b.publicKey() || dev.ListenPort != DefaultPort {
		t.Fatalf("device of %s: port %d, peers %+v; want port %d and only %s", a.node.Name, dev.ListenPort, dev.Peers, DefaultPort, b.publicKey())
	}
	if got := dev.Peers[0].Endpoint.String(); got != "198.18.0.2:51820" {
		t.Errorf("peer endpoint %s, want 198.18.0.2:51820", got)
	}

	// b gets a new key (its key file replaced) and a restarted datapath.
	old := b.publicKey()
	b.newBackend(`{"Type":"wireguard","Datapath":"userspace"}`, filepath.Join(t.TempDir(), "wgkey"))
	if b.publicKey() == old {
		t.Fatal("a new key file gave the same key")
	}
	b.apply(a)
	if err := b.ping(a); err == nil {
		t.Fatal("ping with a key the peer does not know went through")
	}
	a.apply(b)
	dev = a.device()
	if len(dev.Peers) != 1 || dev.Peers[0].PublicKey != b.publicKey() {
		t.Fatalf("after the key change %s has peers %+v; want only the new key %s", a.node.Name, dev.Peers, b.publicKey())
	}
	if err := a.ping(b); err != nil {
		t.Fatal(err)
	}

	// No peers: the stale one lingers receive-only while it may still
	// send (a peer switching backends), then goes.
	a.apply()
	if dev = a.device(); len(dev.Peers) != 1 {
		t.Fatalf("peers %+v: the peer just removed should linger", dev.Peers)
	}
	later := time.Now().Add(lingerQuiet + time.Second)
	a.dp.(*datapath).now = func() time.Time { return later }
	a.apply()
	if dev = a.device(); len(dev.Peers) != 0 {
		t.Fatalf("peers %+v left on a device that wants none", dev.Peers)
	}
}

// Each namespace's userspace device has its own control socket: the lab runs
// several nodes on one host, all sharing /var/run/wireguard.
func TestControlSocketsDifferPerNamespace(t *testing.T) {
	nodes := newPair(t, `{"Type":"wireguard","Datapath":"userspace"}`)
	var names [2]string
	for i, n := range nodes {
		if err := kernel.InNamespace(n.h, func() (err error) { names[i], err = SocketName(DeviceName); return }); err != nil {
			t.Fatal(err)
		}
	}
	if names[0] == names[1] {
		t.Fatalf("both namespaces' devices use the socket %s", names[0])
	}
}

// A second agent on a node (a surge upgrade) stands by while the first runs
// wireguard-go, ready all the same, and takes the device over as soon as
// the first lets go: traffic flows again.
func TestSecondAgentStandsByThenTakesOver(t *testing.T) {
	a, b := newMeshedPair(t, `{"Type":"wireguard","Datapath":"userspace"}`)
	first := a.dp
	second, err := openDatapath(backend.DatapathEnv{StateDir: t.TempDir(), Log: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kernel.InNamespace(a.h, second.Close) })
	a.dp = second
	a.apply(b) // no error: standing by is ready
	if r := second.(*datapath).Report(); !strings.Contains(r, "standing by") {
		t.Fatalf("the second agent's report %q does not say it stands by", r)
	}
	if err := kernel.InNamespace(a.h, first.Close); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for strings.Contains(second.(*datapath).Report(), "standing by") {
		if time.Now().After(deadline) {
			t.Fatal("the second agent never took the device over")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := a.ping(b); err != nil {
		t.Fatal(err)
	}
	if err := b.ping(a); err != nil {
		t.Fatal(err)
	}
}

// With a PSK, nodes sharing it reach each other; a node with another PSK
// does not, and its traffic is not sent in the clear either.
func TestPresharedKey(t *testing.T) {
	psk1, psk2 := mustKey(t), mustKey(t)
	a, b := newMeshedPair(t, `{"Type":"wireguard","Datapath":"userspace","PSK":"`+psk1.String()+`"}`)
	if dev := a.device(); len(dev.Peers) != 1 || dev.Peers[0].PresharedKey != psk1 {
		t.Fatalf("the device's peer does not have the PSK")
	}
	b.newBackend(`{"Type":"wireguard","Datapath":"userspace","PSK":"`+psk2.String()+`"}`, filepath.Join(t.TempDir(), "wgkey"))
	a.apply(b)
	b.apply(a)
	if err := b.ping(a); err == nil {
		t.Fatal("nodes with different PSKs reached each other")
	}
}
