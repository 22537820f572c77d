package udptunnel

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/overlayd/overlayd/pkg/tunqueue"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/pkg/kernel"
)

func TestTrafficFlowsBothWays(t *testing.T) {
	c := newCluster(t, "flow", overlayUDP)
	ts := c.startTunnels()

	c.waitPing(0, 1)
	c.waitPing(1, 0)
	for _, dir := range [][2]int{{0, 1}, {1, 0}} {
		if err := c.tcpTransfer(dir[0], dir[1], 64<<20); err != nil {
			t.Fatalf("TCP %s -> %s: %v", c.nodes[dir[0]].pod, c.nodes[dir[1]].pod, err)
		}
	}
	for i, tun := range ts {
		s := tun.Stats()
		if s.TxPackets == 0 || s.RxPackets == 0 || s.TxBytes < 64<<20 || s.RxBytes < 64<<20 {
			t.Errorf("node %d: counters did not see the traffic: %+v", i+1, s)
		}
		for _, r := range []DropReason{DropUnknownSource, DropMalformed, DropSendError, DropReceiveError, DropTUNReadError, DropTUNWriteError} {
			if s.Drops[r] != 0 {
				t.Errorf("node %d: %d drops for %s on clean traffic", i+1, s.Drops[r], r)
			}
		}
		if !s.Attached || s.Attachments != 1 {
			t.Errorf("node %d: Attached=%v Attachments=%d, want attached once", i+1, s.Attached, s.Attachments)
		}
	}
}

func TestUnknownDestinationIsDroppedAndCounted(t *testing.T) {
	c := newCluster(t, "noroute", overlayUDP)
	ts := c.startTunnels()
	c.waitPing(0, 1)

	// The kernel routes 10.244.9.0/24 to the device, but no peer owns it.
	nowhere := netip.MustParsePrefix("10.244.9.0/24")
	run(t, "ip", "-n", c.nodes[0].ns, "route", "add", nowhere.String(), "dev", device)
	before := ts[0].Stats().Drops[DropNoRoute]
	sock, err := udpSocket(c.nodes[0].pHandle, netip.AddrPortFrom(c.nodes[0].podAddr, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	const sent = 10
	for range sent {
		if _, err := sock.WriteToUDPAddrPort([]byte("lost"), netip.MustParseAddrPort("10.244.9.9:9")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "no_route drops", 5*time.Second, func() bool { return ts[0].Stats().Drops[DropNoRoute]-before >= sent })
	c.waitPing(0, 1) // and the datapath carries on
}

func TestDatagramFromUnknownSourceIsDropped(t *testing.T) {
	c := newCluster(t, "unksrc", overlayUDP)
	ts := c.startTunnels()
	c.waitPing(0, 1)
	a, b := c.nodes[0], c.nodes[1]

	listener, err := udpSocket(a.pHandle, netip.AddrPortFrom(a.podAddr, 9999))
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()

	// An address on node 2's underlay that is not a peer's public address.
	stranger := netip.MustParseAddr("198.18.0.99")
	run(t, "ip", "-n", b.ns, "addr", "add", stranger.String()+"/24", "dev", "u0")
	fromStranger, err := udpSocket(b.handle, netip.AddrPortFrom(stranger, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer fromStranger.Close()
	fromPeer, err := udpSocket(b.handle, netip.AddrPortFrom(b.underlay, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer fromPeer.Close()

	tunnelEnd := netip.AddrPortFrom(a.underlay, DefaultPort)
	inner := func(payload string) []byte {
		return ipv4UDP(netip.AddrPortFrom(b.podAddr, 7777), netip.AddrPortFrom(a.podAddr, 9999), 1, []byte(payload))
	}
	before := ts[0].Stats()
	if _, err := fromStranger.WriteToUDPAddrPort(inner("forged"), tunnelEnd); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "unknown_source drop", 5*time.Second, func() bool {
		return ts[0].Stats().Drops[DropUnknownSource] == before.Drops[DropUnknownSource]+1
	})
	// The same packet from the peer's address is delivered; it is the first
	// thing the pod receives, so the forged one never reached it.
	if _, err := fromPeer.WriteToUDPAddrPort(inner("genuine"), tunnelEnd); err != nil {
		t.Fatal(err)
	}
	listener.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 100)
	n, from, err := listener.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("pod did not receive the peer's datagram: %v", err)
	}
	if got := string(buf[:n]); got != "genuine" || from != netip.AddrPortFrom(b.podAddr, 7777) {
		t.Fatalf("pod received %q from %s, want \"genuine\" from %s:7777", got, from, b.podAddr)
	}
}

func TestMalformedDatagramsAreCountedAndSurvived(t *testing.T) {
	c := newCluster(t, "malform", overlayUDP)
	// No ping first: a late echo reply written to the device would count
	// as a malformed datagram let through. Ensure has attached both.
	ts := c.startTunnels()
	a, b := c.nodes[0], c.nodes[1]
	fromPeer, err := udpSocket(b.handle, netip.AddrPortFrom(b.underlay, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer fromPeer.Close()
	tunnelEnd := netip.AddrPortFrom(a.underlay, DefaultPort)
	valid := ipv4UDP(netip.AddrPortFrom(b.podAddr, 7777), netip.AddrPortFrom(a.podAddr, 9999), 1, []byte("payload"))
	with := func(edit func([]byte) []byte) []byte { return edit(bytes.Clone(valid)) }

	malformed := [][]byte{
		{0x45},                      // one byte
		valid[:19],                  // shorter than an IPv4 header
		bytes.Repeat([]byte{0}, 40), // version 0
		with(func(p []byte) []byte { p[0] = 0x55; return p }),    // version 5
		with(func(p []byte) []byte { p[0] = 0x44; return p }),    // IHL below 5
		with(func(p []byte) []byte { p[0] = 0x4f; return p }),    // IHL beyond the packet
		with(func(p []byte) []byte { p[3]++; return p }),         // total length too long
		with(func(p []byte) []byte { p[3]--; return p }),         // total length too short
		append(bytes.Clone(valid), 0),                            // trailing byte
		append([]byte{0x60}, make([]byte, 38)...),                // IPv6, 39 bytes
		append([]byte{0x60, 0, 0, 0, 0, 9}, make([]byte, 40)...), // IPv6 payload length 9, carries 6
		bytes.Repeat([]byte{0xff}, 1400),                         // version 15
	}
	before := ts[0].Stats()
	for _, d := range malformed {
		if _, err := fromPeer.WriteToUDPAddrPort(d, tunnelEnd); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, fmt.Sprintf("%d malformed drops", len(malformed)), 5*time.Second, func() bool {
		return ts[0].Stats().Drops[DropMalformed]-before.Drops[DropMalformed] >= uint64(len(malformed))
	})
	after := ts[0].Stats()
	if d := after.Drops[DropMalformed] - before.Drops[DropMalformed]; d != uint64(len(malformed)) {
		t.Errorf("malformed drops went up by %d, want %d", d, len(malformed))
	}
	if after.RxPackets != before.RxPackets {
		t.Errorf("%d malformed datagrams were written to the device", after.RxPackets-before.RxPackets)
	}

	// Random datagrams: each is either refused as malformed or written to
	// the device (and then judged by the kernel); none stops the datapath.
	rng := rand.New(rand.NewPCG(1, 2))
	var wantBad, wantGood uint64
	for range 500 {
		d := make([]byte, 1+rng.IntN(1500))
		for i := range d {
			d[i] = byte(rng.Uint32())
		}
		if rng.IntN(2) == 0 { // make it look like IP more often
			d[0] = byte(4+2*rng.IntN(2))<<4 | d[0]&0x0f
		}
		if _, err := inspect(d); err != nil {
			wantBad++
		} else {
			wantGood++
		}
		if _, err := fromPeer.WriteToUDPAddrPort(d, tunnelEnd); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "random datagrams accounted", 10*time.Second, func() bool {
		s := ts[0].Stats()
		return s.Drops[DropMalformed]-after.Drops[DropMalformed] == wantBad &&
			(s.RxPackets-after.RxPackets)+(s.Drops[DropTUNWriteError]-after.Drops[DropTUNWriteError]) >= wantGood
	})
	c.waitPing(0, 1)
	c.waitPing(1, 0)
}

// Flannel's udp backend puts the raw IP packet, and nothing else, in the
// UDP payload. A plain UDP socket stands in for flannel on node 2.
func TestWireFormatIsFlannels(t *testing.T) {
	c := newCluster(t, "wire", overlayUDP)
	a, b := c.nodes[0], c.nodes[1]
	flannel, err := udpSocket(b.handle, netip.AddrPortFrom(b.underlay, DefaultPort))
	if err != nil {
		t.Fatal(err)
	}
	defer flannel.Close()
	c.startTunnel(0, c.spec(0))

	t.Run("sent payload is the IP packet", func(t *testing.T) {
		pkt := ipv4UDP(netip.AddrPortFrom(a.podAddr, 1234), netip.AddrPortFrom(b.podAddr, 5678), 0x4242, []byte("byte for byte"))
		// A raw socket with our own header: the kernel routes it to the
		// device unchanged.
		err := kernel.InNamespace(a.handle, func() error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: b.podAddr.As4()})
		})
		if err != nil {
			t.Fatalf("sending raw packet: %v", err)
		}
		flannel.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 2048)
		for {
			n, from, err := flannel.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("no datagram from the tunnel: %v", err)
			}
			if from != netip.AddrPortFrom(a.underlay, DefaultPort) {
				t.Fatalf("datagram from %s, want %s:%d", from, a.underlay, DefaultPort)
			}
			// The kernel may also send its own packets (e.g. IPv6 router
			// solicitations) to the device; look for ours.
			if n > 20 && buf[0]>>4 == 4 && bytes.Equal(buf[12:20], pkt[12:20]) {
				if !bytes.Equal(buf[:n], pkt) {
					t.Fatalf("UDP payload differs from the IP packet:\n got %x\nwant %x", buf[:n], pkt)
				}
				return
			}
		}
	})

	t.Run("received IP packet is delivered", func(t *testing.T) {
		listener, err := udpSocket(a.pHandle, netip.AddrPortFrom(a.podAddr, 9999))
		if err != nil {
			t.Fatal(err)
		}
		defer listener.Close()
		pkt := ipv4UDP(netip.AddrPortFrom(b.podAddr, 7777), netip.AddrPortFrom(a.podAddr, 9999), 7, []byte("from flannel"))
		if _, err := flannel.WriteToUDPAddrPort(pkt, netip.AddrPortFrom(a.underlay, DefaultPort)); err != nil {
			t.Fatal(err)
		}
		listener.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 100)
		n, from, err := listener.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("pod did not receive the packet: %v", err)
		}
		if string(buf[:n]) != "from flannel" || from != netip.AddrPortFrom(b.podAddr, 7777) {
			t.Fatalf("pod received %q from %s", buf[:n], from)
		}
	})
}

func TestReattachesWhenDeviceIsRecreated(t *testing.T) {
	c := newCluster(t, "recreate", overlayUDP)
	ts := c.startTunnels()
	c.waitPing(0, 1)
	a := c.nodes[0]

	run(t, "ip", "-n", a.ns, "link", "del", device)
	waitFor(t, "datapath to notice the device is gone", 5*time.Second, func() bool { return !ts[0].Stats().Attached })
	err := kernel.InNamespace(a.handle, func() error { return ts[0].Ensure(c.spec(0)) })
	if err == nil || !strings.Contains(err.Error(), device) {
		t.Fatalf("Ensure without the device: got %v, want an error naming %s", err, device)
	}

	c.addTUN(a, c.nodes[1].subnet)
	c.ensure(0, ts[0], c.spec(0))
	if s := ts[0].Stats(); !s.Attached || s.Attachments != 2 {
		t.Fatalf("after recreation: Attached=%v Attachments=%d, want attached twice", s.Attached, s.Attachments)
	}
	c.waitPing(0, 1)
	c.waitPing(1, 0)

	// Deleted and recreated between two reconciles: only the index tells.
	run(t, "ip", "-n", a.ns, "link", "del", device)
	c.addTUN(a, c.nodes[1].subnet)
	c.ensure(0, ts[0], c.spec(0))
	if s := ts[0].Stats(); s.Attachments != 3 {
		t.Fatalf("Attachments=%d after a quick recreate, want 3", s.Attachments)
	}
	c.waitPing(0, 1)
}

func TestPortChangeReattaches(t *testing.T) {
	c := newCluster(t, "port", overlayUDP)
	ts := c.startTunnels()
	c.waitPing(0, 1)
	for i := range ts {
		spec := c.spec(i)
		spec.Port = 8286
		c.ensure(i, ts[i], spec)
		if s := ts[i].Stats(); s.Attachments != 2 {
			t.Fatalf("node %d: Attachments=%d after a port change, want 2", i+1, s.Attachments)
		}
	}
	c.waitPing(0, 1)
	c.waitPing(1, 0)
}

func TestPeerTableChangesWithoutStoppingTraffic(t *testing.T) {
	c := newCluster(t, "swap", overlayUDP)
	ts := c.startTunnels()
	c.waitPing(0, 1)

	// A long transfer runs while node 1's table is replaced over and over
	// (always keeping node 2): it must complete intact, with no route
	// misses and no re-attachment.
	done := make(chan error, 1)
	go func() { done <- c.tcpTransfer(0, 1, 64<<20) }()
	swaps := 0
	for running := true; running; swaps++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("transfer during table swaps: %v", err)
			}
			running = false
		default:
			spec := c.spec(0)
			for j := range swaps % 50 {
				spec.Peers[netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 245, byte(j), 0}), 24)] = ap(netip.AddrFrom4([4]byte{198, 18, 1, byte(j + 1)}))
			}
			c.ensure(0, ts[0], spec)
		}
	}
	s := ts[0].Stats()
	t.Logf("%d table swaps during the transfer", swaps)
	if s.Drops[DropNoRoute] != 0 || s.Attachments != 1 {
		t.Fatalf("no_route drops=%d attachments=%d, want 0 and 1", s.Drops[DropNoRoute], s.Attachments)
	}

	// Without node 2 in the table its traffic is dropped as no_route...
	c.ensure(0, ts[0], &Spec{Device: device, Port: DefaultPort})
	if pings(c.nodes[0].pod, c.nodes[1].podAddr) {
		t.Fatal("ping answered with an empty peer table")
	}
	if got := ts[0].Stats().Drops[DropNoRoute]; got == 0 {
		t.Fatal("no no_route drops with an empty peer table")
	}
	// ...and node 2 no longer counts as a known source for node 1.
	before := ts[0].Stats().Drops[DropUnknownSource]
	pings(c.nodes[1].pod, c.nodes[0].podAddr)
	waitFor(t, "unknown_source drop after removing the peer", 5*time.Second, func() bool {
		return ts[0].Stats().Drops[DropUnknownSource] > before
	})
	// Back in the table, traffic flows again.
	c.ensure(0, ts[0], c.spec(0))
	c.waitPing(0, 1)
	if s := ts[0].Stats(); s.Attachments != 1 {
		t.Fatalf("attachments=%d, want 1: a table change must not re-attach", s.Attachments)
	}
}

// After Close (as when the agent exits) the device, its address and routes
// stay; a new Tunnel attaches to them and forwards again.
func TestRestartKeepsDeviceAndResumes(t *testing.T) {
	c := newCluster(t, "restart", overlayUDP)
	ts := c.startTunnels()
	c.waitPing(0, 1)
	a := c.nodes[0]
	if err := ts[0].Close(); err != nil {
		t.Fatal(err)
	}
	if err := ts[0].Ensure(c.spec(0)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ensure after Close: %v, want ErrClosed", err)
	}

	h, err := netlink.NewHandleAt(a.handle)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName(device)
	if err != nil {
		t.Fatalf("device gone after Close: %v", err)
	}
	if tun, ok := link.(*netlink.Tuntap); !ok || tun.NonPersist || tun.Flags&kernel.TUNFlags != kernel.TUNFlags {
		t.Fatalf("device after Close is %#v, want a persistent TUN with flags %v", link, kernel.TUNFlags)
	}
	if link.Attrs().RawFlags&unix.IFF_LOWER_UP != 0 {
		t.Errorf("device has carrier with no process attached")
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 || addrs[0].IP.String() != a.tunAddr.String() {
		t.Fatalf("device addresses after Close: %v %v", addrs, err)
	}
	routes, err := h.RouteList(link, netlink.FAMILY_V4)
	if err != nil || len(routes) != 1 || routes[0].Dst.String() != c.nodes[1].subnet.String() {
		t.Fatalf("device routes after Close: %v %v", routes, err)
	}

	restarted := c.startTunnel(0, c.spec(0))
	c.waitPing(0, 1)
	c.waitPing(1, 0)
	if s := restarted.Stats(); s.Attachments != 1 || s.TxPackets == 0 {
		t.Fatalf("restarted tunnel stats %+v", s)
	}
}

// A second agent on the node (a surge upgrade) joins the device and the
// port while the first still serves them: both attach (two queues), both
// forward a share of the flows, the first's AwaitSuccessor sees the second
// and returns, and after the first lets go the second carries everything.
func TestSecondAgentJoins(t *testing.T) {
	c := newCluster(t, "join", overlayUDP)
	ts := c.startTunnels()
	first := ts[0]
	c.waitPing(0, 1)
	await := func(timeout time.Duration, successor bool) (joined bool) {
		t.Helper()
		if err := kernel.InNamespace(c.nodes[0].handle, func() error {
			joined = first.AwaitSuccessor(timeout, func() bool { return successor })
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return joined
	}
	if await(time.Second, false) {
		t.Fatal("AwaitSuccessor reported a successor while none runs")
	}
	start := time.Now()
	if await(200*time.Millisecond, true) {
		t.Fatal("AwaitSuccessor reported a successor that never joined")
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("AwaitSuccessor returned after %v, before its timeout, with a successor running that had not joined", d)
	}

	second := c.startTunnel(0, c.spec(0)) // the same device and port
	if err := kernel.InNamespace(c.nodes[0].handle, func() error {
		n, err := tunqueue.Queues(device)
		if err == nil && n != 2 {
			err = fmt.Errorf("%d queues open, want 2", n)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// Many flows, so that the kernel spreads them over both queues.
	dst := netip.AddrPortFrom(c.nodes[1].podAddr, 9)
	for port := 20000; port < 20064; port++ {
		conn, err := udpSocket(c.nodes[0].pHandle, netip.AddrPortFrom(c.nodes[0].podAddr, uint16(port)))
		if err != nil {
			t.Fatal(err)
		}
		conn.WriteToUDPAddrPort([]byte("flow"), dst)
		conn.Close()
	}
	waitFor(t, "both agents forward flows", 5*time.Second, func() bool {
		return first.Stats().TxPackets > 0 && second.Stats().TxPackets > 0
	})
	if !await(time.Second, true) {
		t.Fatal("AwaitSuccessor did not see the second agent that joined")
	}
	first.Close()
	before := second.Stats().TxPackets
	c.waitPing(0, 1)
	c.waitPing(1, 0)
	if second.Stats().TxPackets <= before {
		t.Fatal("after the first agent let go, the second forwarded nothing")
	}
}

// The tunnel port and the health port are shared with SO_REUSEPORT; the
// tunnel's through wireguard-go's socket options.
func TestReusePort(t *testing.T) {
	if !reusePortEnabled {
		t.Fatal("wireguardControlFns does not resolve to wireguard-go's conn.controlFns (renamed upstream?): StdNetBind's sockets lack SO_REUSEPORT")
	}
}

func TestEnsureRejectsBadSpec(t *testing.T) {
	tun := New(zap.NewNop())
	defer tun.Close()
	for _, tc := range []struct {
		spec  Spec
		field string
	}{
		{Spec{Device: "", Port: 8285}, "Spec.Device"},
		{Spec{Device: "a-name-longer-than-15", Port: 8285}, "Spec.Device"},
		{Spec{Device: "overlay0", Port: 0}, "Spec.Port"},
		{Spec{Device: "overlay0", Port: 70000}, "Spec.Port"},
	} {
		err := tun.Ensure(&tc.spec)
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("Ensure(%+v) = %v, want an error naming %s", tc.spec, err, tc.field)
		}
	}
	if err := tun.Ensure(nil); err != nil {
		t.Errorf("Ensure(nil) on a stopped tunnel: %v", err)
	}
}

// Unusable peers are left out (and counted) while the rest are served.
func TestBadPeersAreSkipped(t *testing.T) {
	c := newCluster(t, "badpeer", overlayUDP)
	ts := c.startTunnels()
	spec := c.spec(0)
	spec.Peers[netip.MustParsePrefix("10.244.7.0/24")] = netip.AddrPort{}
	spec.Peers[netip.MustParsePrefix("10.244.8.0/24")] = ap(netip.MustParseAddr("224.0.0.1"))
	spec.Peers[netip.Prefix{}] = ap(netip.MustParseAddr("198.18.0.7"))
	c.ensure(0, ts[0], spec)
	if got := ts[0].Stats().SkippedPeers; got != 3 {
		t.Errorf("SkippedPeers = %d, want 3", got)
	}
	c.waitPing(0, 1)
}

// The Prometheus counters move with the traffic.
func TestMetricsAreExported(t *testing.T) {
	c := newCluster(t, "metrics", overlayUDP)
	c.startTunnels()
	before := metricValues(t)
	c.waitPing(0, 1)
	after := metricValues(t)
	for _, name := range []string{
		`overlayd_udp_packets_total{direction="tx"}`, `overlayd_udp_packets_total{direction="rx"}`,
		`overlayd_udp_bytes_total{direction="tx"}`, `overlayd_udp_bytes_total{direction="rx"}`,
	} {
		if after[name] <= before[name] {
			t.Errorf("%s did not grow: %v -> %v", name, before[name], after[name])
		}
	}
	for _, r := range dropReasons {
		name := fmt.Sprintf(`overlayd_udp_drops_total{reason=%q}`, r)
		if _, ok := after[name]; !ok {
			t.Errorf("%s not exported", name)
		}
	}
}

// IPv6 pods over an IPv6 underlay: the other address family's socket,
// lookup and packet checks.
func TestIPv6OverIPv6(t *testing.T) {
	c := newCluster(t, "v6", overlayUDP)
	type v6 struct{ underlay, pod, gateway netip.Addr }
	addrs := [2]v6{}
	for i, n := range c.nodes {
		k := i + 1
		addrs[i] = v6{
			underlay: netip.MustParseAddr(fmt.Sprintf("fd00:198:18::%d", k)),
			pod:      netip.MustParseAddr(fmt.Sprintf("fd00:10:244:%d::2", k)),
			gateway:  netip.MustParseAddr(fmt.Sprintf("fd00:10:244:%d::1", k)),
		}
		run(t, "ip", "netns", "exec", n.ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
		// An IPv6 underlay costs 20 bytes more than IPv4 (40-byte header).
		run(t, "ip", "-n", n.ns, "link", "set", device, "mtu", fmt.Sprint(tunMTU-20))
		run(t, "ip", "-n", n.ns, "link", "set", "veth0", "mtu", fmt.Sprint(tunMTU-20))
		run(t, "ip", "-n", n.pod, "link", "set", "eth0", "mtu", fmt.Sprint(tunMTU-20))
		run(t, "ip", "-n", n.ns, "addr", "add", addrs[i].underlay.String()+"/64", "dev", "u0", "nodad")
		run(t, "ip", "-n", n.ns, "addr", "add", addrs[i].gateway.String()+"/64", "dev", "veth0", "nodad")
		run(t, "ip", "-n", n.pod, "addr", "add", addrs[i].pod.String()+"/64", "dev", "eth0", "nodad")
		run(t, "ip", "-n", n.pod, "-6", "route", "add", "default", "via", addrs[i].gateway.String())
	}
	subnet := func(i int) netip.Prefix { return netip.PrefixFrom(addrs[i].pod, 64).Masked() }
	for i, n := range c.nodes {
		run(t, "ip", "-n", n.ns, "-6", "route", "add", subnet(1-i).String(), "dev", device)
	}
	var ts [2]*Tunnel
	for i := range c.nodes {
		ts[i] = c.startTunnel(i, &Spec{Device: device, Port: DefaultPort,
			Peers: map[netip.Prefix]netip.AddrPort{subnet(1 - i): ap(addrs[1-i].underlay)}})
	}
	for i := range c.nodes {
		waitFor(t, fmt.Sprintf("ping %s -> %s", addrs[i].pod, addrs[1-i].pod), 10*time.Second, func() bool {
			return pings(c.nodes[i].pod, addrs[1-i].pod)
		})
	}
	// A TCP transfer over IPv6 exercises the segmentation offloads.
	c.nodes[0].podAddr, c.nodes[1].podAddr = addrs[0].pod, addrs[1].pod
	if err := c.tcpTransfer(0, 1, 16<<20); err != nil {
		t.Fatalf("TCP over IPv6: %v", err)
	}
	if s := ts[1].Stats(); s.RxBytes < 16<<20 {
		t.Errorf("node 2 received %d bytes, want at least the 16 MiB sent", s.RxBytes)
	}
	for i, tun := range ts {
		if s := tun.Stats(); s.Drops[DropMalformed]+s.Drops[DropSendError]+s.Drops[DropTUNWriteError] != 0 {
			t.Errorf("node %d dropped packets: %v", i+1, s.Drops)
		}
	}
}
