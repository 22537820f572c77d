package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/overlayd/overlayd/backend/vxlan"
	"github.com/overlayd/overlayd/pkg/udptunnel"
	harness "github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/lab"
)

const (
	ingressDropped = "overlayd_ingress_dropped_packets_total"
	rogueSource    = "10.244.250.1" // in the cluster network, leased to no node
	roguePort      = 7300
	roguePackets   = 20
)

// TestOnlyPeersSendIntoTheOverlay: a host on the underlay that is not a
// node crafts VXLAN traffic for a pod the way an attacker would (its own
// VXLAN device on VNI 1 and port 8472, pointed at the node's published VTEP
// MAC): without the ingress filter the pod receives it, with the filter
// (the default) nothing arrives and the drops are counted, while peers
// still reach the pod. A node that joins is reachable as soon as its peers
// have programmed it; one that leaves is shut out. The same for the udp
// backend's port.
func TestOnlyPeersSendIntoTheOverlay(t *testing.T) {
	hc := harness.New(t, harness.Options{
		Prefix: labPrefix, Nodes: 3, ExternalHost: true, NetConf: netConf("vxlan"),
		Overlayd: overlaydBin, Args: agentFlags, NoAgents: true,
	})
	c := &cluster{Cluster: hc, t: t, directRouting: map[string]bool{}}
	n1, n2, n3 := c.node(0), c.node(1), c.node(2)
	for _, n := range []*lab.Node{n1, n2} {
		if _, err := c.StartAgent(n); err != nil {
			t.Fatal(err)
		}
		c.waitReady(n)
		if _, err := c.AddPod(n, n.Name+"-p0"); err != nil {
			t.Fatal(err)
		}
	}
	c.requireFullMesh(c.Pods)
	pod1 := c.PodsOn(n1)[0]
	ext := c.Lab.External
	self := c.leases()[n1.Name]
	rogueVXLAN(t, ext, pod1.IP, self.vtepMAC, n1.IP)

	// The attack is real: with the filter off, the crafted traffic arrives.
	c.restartAgentWithArgs(n1, "--ingress-filter=false")
	if got := datagramsArriving(t, pod1, func() { sendUDP(t, ext, pod1.IP) }); got == 0 {
		t.Fatalf("with --ingress-filter=false no crafted datagram reached %s: the rogue setup does not work, so the filter test below would prove nothing", pod1.Name)
	}
	c.restartAgentWithArgs(n1)
	requirePeersSet(t, n1, []netip.Addr{n2.IP})
	before := metricValue(t, c, n1, ingressDropped)
	if got := datagramsArriving(t, pod1, func() { sendUDP(t, ext, pod1.IP) }); got != 0 {
		t.Errorf("vxlan: %d of %d datagrams from the rogue host reached %s; want none", got, roguePackets, pod1.Name)
	}
	dropped := metricValue(t, c, n1, ingressDropped) - before
	t.Logf("vxlan: 0 of %d rogue datagrams arrived, %v dropped at the node", roguePackets, dropped)
	if dropped < roguePackets {
		t.Errorf("%s counted %v dropped packets; want at least %d", ingressDropped, dropped, roguePackets)
	}
	c.requireFullMesh(c.Pods)

	// A node that joins is reachable as soon as node 1 has programmed it.
	cidr, err := c.WaitPodCIDR(context.Background(), n3, harness.PodCIDRTimeout)
	if err != nil {
		t.Fatal(err)
	}
	pod3, err := n3.AddPod(n3.Name+"-p0", cidr)
	if err != nil {
		t.Fatal(err)
	}
	c.Pods = append(c.Pods, pod3)
	if _, err := c.StartAgent(n3); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 60*time.Second, "node 1 programs the new node 3", func() (bool, string) {
		fdb := fdbDsts(t, n1, self.vxlanDevice())
		return slices.Contains(fdb, n3.IP.String()), fmt.Sprint(fdb)
	})
	if err := pod1.PingWithin(pod3.IP, time.Second); err != nil {
		t.Errorf("node 3 programmed on node 1, but %s does not reach %s within 1 s: %v", pod1.Name, pod3.Name, err)
	}
	requirePeersSet(t, n1, []netip.Addr{n2.IP, n3.IP})
	c.requireFullMesh(c.Pods)

	// A node that leaves is shut out, though its kernel still sends.
	stopAgent(t, c, n3)
	if err := c.Admin.CoreV1().Nodes().Delete(context.Background(), n3.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 30*time.Second, "node 1 lets go of the departed node 3", func() (bool, string) {
		got := peersSet(t, n1)
		return !slices.Contains(got, n3.IP), fmt.Sprint(got)
	})
	before = metricValue(t, c, n1, ingressDropped)
	if got := datagramsArriving(t, pod1, func() { sendUDPFrom(t, pod3, pod1.IP) }); got != 0 {
		t.Errorf("%d of %d datagrams from the departed node's pod reached %s; want none", got, roguePackets, pod1.Name)
	}
	if d := metricValue(t, c, n1, ingressDropped) - before; d < roguePackets {
		t.Errorf("traffic of the departed node: %v drops counted; want at least %d", d, roguePackets)
	}
	c.Pods = slices.DeleteFunc(c.Pods, func(p *lab.Pod) bool { return p == pod3 })

	// The udp backend's port: a datagram carrying an IP packet for the pod.
	for _, n := range []*lab.Node{n1, n2} {
		c.writeNetConf(n, netConf("udp"))
	}
	harness.Eventually(t, 60*time.Second, "both nodes publish udp", func() (bool, string) {
		a, b := c.publishedBackend(n1), c.publishedBackend(n2)
		return a == "udp" && b == "udp", a + " " + b
	})
	c.requireFullMesh(c.Pods)
	before = metricValue(t, c, n1, ingressDropped)
	packet := ipv4UDP(netip.MustParseAddr(rogueSource), pod1.IP, roguePort, []byte("rogue"))
	if got := datagramsArriving(t, pod1, func() { sendRaw(t, ext, netip.AddrPortFrom(n1.IP, udptunnel.DefaultPort), packet) }); got != 0 {
		t.Errorf("udp: %d of %d datagrams from the rogue host reached %s; want none", got, roguePackets, pod1.Name)
	}
	if d := metricValue(t, c, n1, ingressDropped) - before; d < roguePackets {
		t.Errorf("udp: %v drops counted; want at least %d", d, roguePackets)
	} else {
		t.Logf("udp: 0 of %d rogue datagrams arrived, %v dropped at the node", roguePackets, d)
	}
	c.requireFullMesh(c.Pods)
}

// rogueVXLAN gives the host a VXLAN device of its own on the cluster's VNI
// and port, with the node's VTEP MAC as the way to the pod.
func rogueVXLAN(t *testing.T, h *lab.Host, pod netip.Addr, vtepMAC string, node netip.Addr) {
	t.Helper()
	for _, argv := range [][]string{
		{"ip", "link", "add", "rogue", "type", "vxlan", "id", "1", "dstport", fmt.Sprint(vxlan.DefaultPort), "local", h.IP.String(), "nolearning"},
		{"ip", "link", "set", "rogue", "up"},
		{"ip", "addr", "add", rogueSource + "/32", "dev", "rogue"},
		{"ip", "route", "add", pod.String() + "/32", "dev", "rogue"},
		{"ip", "neigh", "add", pod.String(), "lladdr", vtepMAC, "dev", "rogue", "nud", "permanent"},
		{"bridge", "fdb", "append", vtepMAC, "dev", "rogue", "dst", node.String()},
	} {
		if out, err := h.Exec(context.Background(), argv...); err != nil {
			t.Fatalf("%s in %s: %v\n%s", strings.Join(argv, " "), h.NS, err, out)
		}
	}
}

// datagramsArriving counts the datagrams to roguePort the pod receives
// while send runs and for a second after.
func datagramsArriving(t *testing.T, pod *lab.Pod, send func()) int {
	t.Helper()
	var pc net.PacketConn
	if err := pod.Do(func() (err error) {
		pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", roguePort))
		return err
	}); err != nil {
		t.Fatalf("listening in %s: %v", pod.Name, err)
	}
	defer pc.Close()
	got := make(chan int, 1)
	go func() {
		n, buf := 0, make([]byte, 1500)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				got <- n
				return
			}
			n++
		}
	}()
	send()
	pc.SetReadDeadline(time.Now().Add(time.Second))
	return <-got
}

// sendUDP sends roguePackets datagrams from the host to dst:roguePort.
func sendUDP(t *testing.T, h *lab.Host, dst netip.Addr) {
	t.Helper()
	conn, err := h.Dial(context.Background(), "udp4", netip.AddrPortFrom(dst, roguePort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i := range roguePackets {
		conn.Write([]byte(fmt.Sprintf("rogue %d", i)))
		time.Sleep(10 * time.Millisecond) // pace, so that no queue overflows
	}
}

func sendUDPFrom(t *testing.T, p *lab.Pod, dst netip.Addr) { t.Helper(); sendUDP(t, &p.Host, dst) }

// sendRaw sends payload to dst from the host roguePackets times.
func sendRaw(t *testing.T, h *lab.Host, dst netip.AddrPort, payload []byte) {
	t.Helper()
	conn, err := h.Dial(context.Background(), "udp4", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for range roguePackets {
		conn.Write(payload)
		time.Sleep(10 * time.Millisecond)
	}
}

// ipv4UDP builds an IPv4 packet with a UDP datagram, as the udp backend
// carries them (the UDP checksum left 0, which IPv4 allows).
func ipv4UDP(src, dst netip.Addr, port uint16, data []byte) []byte {
	udpLen := 8 + len(data)
	p := make([]byte, 20+udpLen)
	p[0], p[8], p[9] = 0x45, 64, 17 // version 4, 5 words; TTL; UDP
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	copy(p[12:16], src.AsSlice())
	copy(p[16:20], dst.AsSlice())
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(p[10:], ^uint16(sum))
	binary.BigEndian.PutUint16(p[20:], port)
	binary.BigEndian.PutUint16(p[22:], port)
	binary.BigEndian.PutUint16(p[24:], uint16(udpLen))
	copy(p[28:], data)
	return p
}

// peersSet is what the node's ingress filter lets in (iptables mode: the
// ipset), read over netlink.
func peersSet(t *testing.T, n *lab.Node) []netip.Addr {
	t.Helper()
	nl, err := n.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	set, err := nl.IpsetList("overlayd-peers-v4")
	if err != nil {
		t.Fatalf("ipset overlayd-peers-v4 on %s: %v", n.Name, err)
	}
	var addrs []netip.Addr
	for _, e := range set.Entries {
		if a, ok := netip.AddrFromSlice(e.IP); ok {
			addrs = append(addrs, a.Unmap())
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	return addrs
}

func requirePeersSet(t *testing.T, n *lab.Node, want []netip.Addr) {
	t.Helper()
	slices.SortFunc(want, netip.Addr.Compare)
	if got := peersSet(t, n); !slices.Equal(got, want) {
		t.Fatalf("%s lets in %v; want its peers %v", n.Name, got, want)
	}
}

// stopAgent stops the node's agent gracefully and waits until it exited.
func stopAgent(t *testing.T, c *cluster, n *lab.Node) {
	t.Helper()
	p := c.Agents[n.Name]
	if err := p.Stop(); err != nil {
		t.Logf("stopping the agent on %s: %v", n.Name, err)
	}
	if p.Running() {
		t.Fatalf("agent on %s still runs", n.Name)
	}
}
