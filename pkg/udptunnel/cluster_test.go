package udptunnel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/test/netnstest"
)

// The test network: two "nodes" (network namespaces) joined by a veth pair
// on 198.18.0.0/24, each with one "pod" (a namespace behind a veth, routed
// by its node) and an overlay device that routes the other node's pod
// subnet. All names start with nsPrefix so parallel work never collides.
const nsPrefix = "ovlB-"

type overlayKind int

const (
	overlayUDP   overlayKind = iota // a TUN device driven by a Tunnel
	overlayVXLAN                    // in-kernel vxlan, for comparison
)

const (
	tunMTU   = 1500 - 28 // underlay minus outer IPv4 + UDP headers
	vxlanMTU = 1500 - 50
	device   = "overlay0"
)

type node struct {
	ns       string // node namespace name
	pod      string // pod namespace name
	underlay netip.Addr
	subnet   netip.Prefix
	podAddr  netip.Addr
	gateway  netip.Addr // node side of the pod veth
	tunAddr  netip.Addr // the overlay device's address
	handle   netns.NsHandle
	pHandle  netns.NsHandle
}

type cluster struct {
	t     testing.TB
	nodes [2]*node
}

// newCluster builds the two nodes with the given overlay. tag keeps the
// namespace names of concurrent tests apart.
func newCluster(t testing.TB, tag string, kind overlayKind) *cluster {
	t.Helper()
	if len(tag) > 8 {
		t.Fatalf("tag %q too long", tag)
	}
	c := &cluster{t: t}
	for i := range c.nodes {
		k := i + 1
		n := &node{
			underlay: netip.AddrFrom4([4]byte{198, 18, 0, byte(k)}),
			subnet:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(k), 0}), 24),
			podAddr:  netip.AddrFrom4([4]byte{10, 244, byte(k), 2}),
			gateway:  netip.AddrFrom4([4]byte{10, 244, byte(k), 1}),
			tunAddr:  netip.AddrFrom4([4]byte{10, 244, byte(k), 0}),
		}
		c.nodes[i] = n
		n.ns, n.handle = netnstest.New(t, nsPrefix+tag+"-", fmt.Sprintf("n%d", k))
		n.pod, n.pHandle = netnstest.New(t, nsPrefix+tag+"-", fmt.Sprintf("p%d", k))
	}
	a, b := c.nodes[0], c.nodes[1]
	mtu := tunMTU
	if kind == overlayVXLAN {
		mtu = vxlanMTU
	}
	run(t, "ip", "-n", a.ns, "link", "add", "u0", "type", "veth", "peer", "name", "u0", "netns", b.ns)
	for _, n := range c.nodes {
		run(t, "ip", "-n", n.ns, "link", "set", "lo", "up")
		run(t, "ip", "-n", n.ns, "addr", "add", n.underlay.String()+"/24", "dev", "u0")
		run(t, "ip", "-n", n.ns, "link", "set", "u0", "up")
		run(t, "ip", "netns", "exec", n.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		// The pod: a veth into the node, its MTU the overlay's, default
		// route via the node.
		run(t, "ip", "-n", n.pod, "link", "set", "lo", "up")
		run(t, "ip", "-n", n.pod, "link", "add", "eth0", "mtu", fmt.Sprint(mtu), "type", "veth",
			"peer", "name", "veth0", "mtu", fmt.Sprint(mtu), "netns", n.ns)
		run(t, "ip", "-n", n.pod, "addr", "add", n.podAddr.String()+"/24", "dev", "eth0")
		run(t, "ip", "-n", n.pod, "link", "set", "eth0", "up")
		run(t, "ip", "-n", n.pod, "route", "add", "default", "via", n.gateway.String())
		run(t, "ip", "-n", n.ns, "addr", "add", n.gateway.String()+"/24", "dev", "veth0")
		run(t, "ip", "-n", n.ns, "link", "set", "veth0", "up")
	}
	switch kind {
	case overlayUDP:
		for i, n := range c.nodes {
			c.addTUN(n, c.nodes[1-i].subnet)
		}
	case overlayVXLAN:
		mac := func(n *node) string { return fmt.Sprintf("02:00:00:00:00:%02x", n.underlay.As4()[3]) }
		for i, n := range c.nodes {
			other := c.nodes[1-i]
			run(t, "ip", "-n", n.ns, "link", "add", "vxlan0", "address", mac(n), "mtu", fmt.Sprint(vxlanMTU),
				"type", "vxlan", "id", "1", "local", n.underlay.String(), "dev", "u0", "dstport", "8472", "nolearning")
			run(t, "ip", "-n", n.ns, "addr", "add", n.tunAddr.String()+"/32", "dev", "vxlan0")
			run(t, "ip", "-n", n.ns, "link", "set", "vxlan0", "up")
			run(t, "ip", "-n", n.ns, "neigh", "add", other.tunAddr.String(), "lladdr", mac(other), "dev", "vxlan0", "nud", "permanent")
			run(t, "bridge", "-n", n.ns, "fdb", "append", mac(other), "dev", "vxlan0", "dst", other.underlay.String())
			run(t, "ip", "-n", n.ns, "route", "add", other.subnet.String(), "via", other.tunAddr.String(), "dev", "vxlan0", "onlink")
		}
	}
	return c
}

// addTUN creates the node's TUN device the way the kernel reconciler does,
// with an address and a route for each subnet in routes.
func (c *cluster) addTUN(n *node, routes ...netip.Prefix) {
	t := c.t
	t.Helper()
	if err := kernel.InNamespace(n.handle, func() error { return CreateDevice(device, tunMTU) }); err != nil {
		t.Fatalf("CreateDevice in %s: %v", n.ns, err)
	}
	run(t, "ip", "-n", n.ns, "addr", "add", n.tunAddr.String()+"/32", "dev", device)
	run(t, "ip", "-n", n.ns, "link", "set", device, "up")
	for _, r := range routes {
		run(t, "ip", "-n", n.ns, "route", "add", r.String(), "dev", device)
	}
}

// spec is node i's desired state: the other node is its only peer.
func (c *cluster) spec(i int) *Spec {
	other := c.nodes[1-i]
	return &Spec{Device: device, Port: DefaultPort, Peers: map[netip.Prefix]netip.AddrPort{other.subnet: ap(other.underlay)}}
}

// startTunnels runs one Tunnel per node, each with the other as its peer.
func (c *cluster) startTunnels() [2]*Tunnel {
	c.t.Helper()
	var ts [2]*Tunnel
	for i := range c.nodes {
		ts[i] = c.startTunnel(i, c.spec(i))
	}
	return ts
}

func (c *cluster) startTunnel(i int, spec *Spec) *Tunnel {
	c.t.Helper()
	var log *zap.Logger
	if tt, ok := c.t.(*testing.T); ok {
		log = zaptest.NewLogger(tt)
	} else {
		log = zap.NewNop()
	}
	tun := New(log)
	c.t.Cleanup(func() { tun.Close() })
	c.ensure(i, tun, spec)
	return tun
}

// ensure calls tun.Ensure inside node i's namespace and fails the test on error.
func (c *cluster) ensure(i int, tun *Tunnel, spec *Spec) {
	c.t.Helper()
	if err := kernel.InNamespace(c.nodes[i].handle, func() error { return tun.Ensure(spec) }); err != nil {
		c.t.Fatalf("Ensure on %s: %v", c.nodes[i].ns, err)
	}
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pings reports whether one ping from pod namespace from to dst is answered.
func pings(from string, dst netip.Addr) bool {
	return exec.Command("ip", "netns", "exec", from, "ping", "-c", "1", "-W", "1", dst.String()).Run() == nil
}

func (c *cluster) waitPing(from, to int) {
	c.t.Helper()
	src, dst := c.nodes[from], c.nodes[to]
	waitFor(c.t, fmt.Sprintf("ping %s -> %s", src.podAddr, dst.podAddr), 10*time.Second,
		func() bool { return pings(src.pod, dst.podAddr) })
}

// tcpTransfer sends size pseudo-random bytes over TCP from pod from to pod
// to and checks that they arrive intact.
func (c *cluster) tcpTransfer(from, to int, size int64) error {
	src, dst := c.nodes[from], c.nodes[to]
	var ln net.Listener
	if err := kernel.InNamespace(dst.pHandle, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(dst.podAddr, 0).String())
		return err
	}); err != nil {
		return err
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer conn.Close()
		h := sha256.New()
		io.Copy(h, conn)
		got <- h.Sum(nil)
	}()
	var conn net.Conn
	if err := kernel.InNamespace(src.pHandle, func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second}
		conn, err = d.Dial("tcp", ln.Addr().String())
		return err
	}); err != nil {
		return fmt.Errorf("dialing %s from %s: %w", ln.Addr(), src.pod, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	h := sha256.New()
	data := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{1}), size), h)
	if _, err := io.Copy(conn, data); err != nil {
		return fmt.Errorf("sending: %w", err)
	}
	conn.(*net.TCPConn).CloseWrite()
	select {
	case sum := <-got:
		if !bytes.Equal(sum, h.Sum(nil)) {
			return errors.New("received data differs from sent data")
		}
		return nil
	case <-time.After(60 * time.Second):
		return errors.New("receiver did not finish")
	}
}

// udpSocket opens a UDP socket bound to addr inside ns.
func udpSocket(ns netns.NsHandle, addr netip.AddrPort) (*net.UDPConn, error) {
	var conn *net.UDPConn
	err := kernel.InNamespace(ns, func() (err error) {
		conn, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	})
	return conn, err
}

// commandIn starts a long-running command in namespace ns, killed when the
// test ends.
func commandIn(t testing.TB, ns string, name string, args ...string) *exec.Cmd {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting %s in %s: %v", name, ns, err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
	})
	return cmd
}

// CreateDevice creates the persistent TUN device name with MTU mtu in the
// caller's network namespace, the way pkg/kernel does for the daemon (the
// flags are pkg/kernel's TUNFlags, which this datapath attaches with). It
// stays down and without addresses; the caller owns those.
func CreateDevice(name string, mtu int) error {
	link := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TUN, Flags: kernel.TUNFlags}
	if err := netlink.LinkAdd(link); err != nil {
		return fmt.Errorf("creating TUN device %s: %w", name, err)
	}
	for _, f := range link.Fds {
		f.Close()
	}
	created, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("reading back TUN device %s: %w", name, err)
	}
	return netlink.LinkSetMTU(created, mtu)
}
