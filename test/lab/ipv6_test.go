package lab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// podSubnet6 is node k's IPv6 pod subnet in these tests.
func podSubnet6(k int) netip.Prefix {
	return netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%x::/64", k))
}

// dualStackSubnetEnv is a subnet.env as flanneld writes it for node k of a
// dual-stack cluster.
func dualStackSubnetEnv(k int) string {
	return fmt.Sprintf("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.%d.1/24\n"+
		"FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=%s1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", k, podSubnet6(k).Addr())
}

// addrs6 returns the IPv6 addresses on a link: of global scope, or all.
func addrs6(t *testing.T, h *Host, ifname string, all bool) []netlink.Addr {
	t.Helper()
	nl, err := h.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	link, err := nl.LinkByName(ifname)
	if err != nil {
		t.Fatalf("%s: %s: %v", h.NS, ifname, err)
	}
	addrs, err := nl.AddrList(link, netlink.FAMILY_V6)
	if err != nil {
		t.Fatalf("%s: addresses of %s: %v", h.NS, ifname, err)
	}
	var out []netlink.Addr
	for _, a := range addrs {
		if all || a.Scope == unix.RT_SCOPE_UNIVERSE {
			out = append(out, a)
		}
	}
	return out
}

// routeVia returns the gateway the namespace routes dst through (nil: on link).
func routeVia(t *testing.T, h *Host, dst netip.Addr) net.IP {
	t.Helper()
	nl, err := h.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	routes, err := nl.RouteGet(net.IP(dst.AsSlice()))
	if err != nil || len(routes) == 0 {
		t.Fatalf("%s: route to %s: %v %v", h.NS, dst, routes, err)
	}
	return routes[0].Gw
}

// TestUnderlayIPv6: every host has its ULA address beside the IPv4 one,
// usable at once (nodad) and kept across a link flap; an IPv6 default
// route via the segment's gateway; and ICMPv6 reaches across the segment,
// through the gateway to the routed segment, and to the external host.
func TestUnderlayIPv6(t *testing.T) {
	l := New(t, Options{Prefix: testPrefix, Nodes: 2, RoutedNodes: 1, ExternalHost: true})
	near, peer, far := l.Nodes[0], l.Nodes[1], l.Nodes[2]
	want := map[*Node]netip.Addr{
		near: netip.MustParseAddr("fd00:198:18::11"),
		peer: netip.MustParseAddr("fd00:198:18::12"),
		far:  netip.MustParseAddr("fd00:198:19::13"),
	}
	for n, ip6 := range want {
		seg, gw := Segment0v6, Gateway0IPv6
		if n.Segment == 1 {
			seg, gw = Segment1v6, Gateway1IPv6
		}
		if n.IP6 != ip6 || n.Gateway6 != gw || !seg.Contains(n.IP6) || n.Addr(true) != n.IP6 || n.Addr(false) != n.IP {
			t.Errorf("%s: IP6 %s gateway %s; want %s via %s", n.Name, n.IP6, n.Gateway6, ip6, gw)
		}
		addrs := addrs6(t, &n.Host, UnderlayIface, false)
		if len(addrs) != 1 || addrs[0].IPNet.String() != ip6.String()+"/64" {
			t.Errorf("%s: eth0 IPv6 addresses %v, want %s/64", n.Name, addrs, ip6)
		}
		if gw6 := routeVia(t, &n.Host, netip.MustParseAddr("2001:db8::1")); !gw6.Equal(net.IP(gw.AsSlice())) {
			t.Errorf("%s: IPv6 default route via %v, want %s", n.Name, gw6, gw)
		}
	}
	if l.External.IP6 != ExternalIPv6 {
		t.Errorf("external host IP6 %s, want %s", l.External.IP6, ExternalIPv6)
	}
	if v, err := l.Gateway.Sysctl("net/ipv6/conf/all/forwarding"); err != nil || v != "1" {
		t.Errorf("gateway IPv6 forwarding %q %v, want 1", v, err)
	}
	if gw := routeVia(t, &near.Host, far.IP6); !gw.Equal(net.IP(Gateway0IPv6.AsSlice())) {
		t.Errorf("route %s -> %s via %v, want the gateway %s", near.Name, far.IP6, gw, Gateway0IPv6)
	}
	if gw := routeVia(t, &near.Host, peer.IP6); gw != nil {
		t.Errorf("route %s -> %s via %v, want on link", near.Name, peer.IP6, gw)
	}
	for _, c := range []struct {
		from *Host
		to   netip.Addr
	}{
		{&near.Host, peer.IP6}, {&peer.Host, near.IP6}, {&near.Host, far.IP6}, {&far.Host, near.IP6},
		{&far.Host, ExternalIPv6}, {l.External, far.IP6}, {&near.Host, Gateway0IPv6}, {&far.Host, Gateway1IPv6},
	} {
		if err := c.from.PingWithin(c.to, 10*time.Second); err != nil {
			t.Error(err)
		}
	}

	// A link flap keeps the address, as it keeps the IPv4 one.
	setLink(t, &peer.Host, UnderlayIface, false)
	if addrs := addrs6(t, &peer.Host, UnderlayIface, false); len(addrs) != 1 {
		t.Errorf("%s: IPv6 addresses with eth0 down: %v, want %s kept", peer.Name, addrs, peer.IP6)
	}
	setLink(t, &peer.Host, UnderlayIface, true)
	if err := near.PingWithin(peer.IP6, 10*time.Second); err != nil {
		t.Errorf("after a link flap: %v", err)
	}
}

// TestUnderlayNoDAD: nothing in the underlay waits for duplicate address
// detection. The lab's links have DAD off (accept_dad 0: for their
// link-local addresses) and the lab's addresses carry nodad; once New
// returns none is tentative, and the very first ping through the gateway is
// answered at once (with DAD the gateway sends no neighbour solicitation
// for a second or two). An address added the ordinary way on a link with
// DAD on is tentative, which shows the check sees it.
//
// New waits for what the kernel still does from a work queue (settleIPv6):
// under load, with other tests' namespaces coming and going, that work is
// late, and this test fails without the wait.
func TestUnderlayNoDAD(t *testing.T) {
	l := New(t, Options{Prefix: testPrefix, Nodes: 1, RoutedNodes: 1, ExternalHost: true})
	type link struct {
		h    *Host
		name string
	}
	links := []link{{l.Gateway, "eth0"}, {l.Gateway, "eth1"}, {l.External, UnderlayIface}}
	for _, n := range l.Nodes {
		links = append(links, link{&n.Host, UnderlayIface})
	}
	for _, link := range links {
		if v, err := link.h.Sysctl("net/ipv6/conf/" + link.name + "/accept_dad"); err != nil || v != "0" {
			t.Errorf("%s %s: accept_dad %q %v, want 0", link.h.NS, link.name, v, err)
		}
		addrs := addrs6(t, link.h, link.name, true)
		if len(addrs) != 2 {
			t.Fatalf("%s %s: IPv6 addresses %v, want the lab's and a link-local one", link.h.NS, link.name, addrs)
		}
		for _, a := range addrs {
			if f := a.Flags; f&unix.IFA_F_TENTATIVE != 0 || (a.Scope == unix.RT_SCOPE_UNIVERSE && f&unix.IFA_F_NODAD == 0) {
				t.Errorf("%s %s: %s flags %#x: tentative, or the lab's without nodad", link.h.NS, link.name, a.IPNet, f)
			}
		}
	}
	// DAD would take at least a second: the kernel's default retransmit timer.
	if err := l.Nodes[0].PingWithin(l.Nodes[1].IP6, 900*time.Millisecond); err != nil {
		t.Errorf("first ping through the gateway: %v", err)
	}

	n := l.Nodes[0]
	if err := n.SetSysctl("net/ipv6/conf/"+UnderlayIface+"/accept_dad", "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Exec(context.Background(), "ip", "-6", "addr", "add", "fd00:198:18::98/64", "dev", UnderlayIface); err != nil {
		t.Fatal(err)
	}
	tentative := false
	for _, a := range addrs6(t, &n.Host, UnderlayIface, false) {
		if a.IP.Equal(net.ParseIP("fd00:198:18::98")) {
			tentative = a.Flags&unix.IFA_F_TENTATIVE != 0
		}
	}
	if !tentative {
		t.Error("an address added the ordinary way, with DAD on, is not tentative: the check above cannot fail")
	}
	if got := solicitedNode(n.IP6); got != netip.MustParseAddr("ff02::1:ff00:11") {
		t.Errorf("solicited-node group of %s: %s", n.IP6, got)
	}
}

// TestDirectPodsDualStack: two nodes with two dual-stack pods each; without
// routes only pods on one node reach each other, over either family; with
// routes of both families added by hand, every pair does over both.
func TestDirectPodsDualStack(t *testing.T) {
	l := New(t, Options{Prefix: testPrefix, Nodes: 2})
	var pods []*Pod
	for _, n := range l.Nodes {
		for _, suffix := range []string{"a", "b"} {
			p, err := n.AddPod(fmt.Sprintf("d%d%s", n.Index, suffix), podSubnet(n.Index), podSubnet6(n.Index))
			if err != nil {
				t.Fatal(err)
			}
			pods = append(pods, p)
		}
	}
	for _, p := range pods {
		k := p.Node.Index
		wantGW6 := podSubnet6(k).Addr().Next()
		if p.Subnet != podSubnet(k) || !p.Subnet.Contains(p.IP) || p.Subnet6 != podSubnet6(k) || !p.Subnet6.Contains(p.IP6) ||
			p.Gateway6 != wantGW6 || p.IP6 == wantGW6 {
			t.Errorf("pod %s: %s in %s, %s in %s via %s; want in %s and %s via %s",
				p.Name, p.IP, p.Subnet, p.IP6, p.Subnet6, p.Gateway6, podSubnet(k), podSubnet6(k), wantGW6)
		}
		if gw := routeVia(t, &p.Host, netip.MustParseAddr("2001:db8::1")); !gw.Equal(net.IP(p.Gateway6.AsSlice())) {
			t.Errorf("pod %s: IPv6 default route via %v, want %s", p.Name, gw, p.Gateway6)
		}
		if gw := routeVia(t, &p.Host, netip.MustParseAddr("192.0.2.1")); !gw.Equal(net.IP(p.Gateway.AsSlice())) {
			t.Errorf("pod %s: IPv4 default route via %v, want %s", p.Name, gw, p.Gateway)
		}
		if addrs := addrs6(t, &p.Host, "eth0", false); len(addrs) != 1 || addrs[0].Flags&unix.IFA_F_TENTATIVE != 0 {
			t.Errorf("pod %s: IPv6 addresses %v, want one, not tentative", p.Name, addrs)
		}
	}
	if pods[0].IP6 == pods[1].IP6 {
		t.Fatalf("two pods got %s", pods[0].IP6)
	}
	for _, n := range l.Nodes {
		if v, err := n.Sysctl("net/ipv6/conf/all/forwarding"); err != nil || v != "1" {
			t.Errorf("%s: IPv6 forwarding %q %v, want 1", n.Name, v, err)
		}
	}
	if _, err := l.Nodes[0].AddPod("v4-only", podSubnet(1)); err == nil {
		t.Error("an IPv4-only pod on a dual-stack node was accepted")
	}

	for _, v6 := range []bool{false, true} {
		before := CheckMatrixFamily(context.Background(), pods, 1500*time.Millisecond, v6)
		for _, f := range before.Failed() {
			if f.From.Node == f.To.Node {
				t.Errorf("%s: same-node pair failed: %v", familyName(v6), f)
			}
		}
		if got, want := len(before.Failed()), len(pods)*len(pods)/2; got != want {
			t.Fatalf("%s before routes: %d failing pairs, want %d (all cross-node)\n%s", familyName(v6), got, want, before)
		}
	}

	routePodSubnets(t, l.Nodes, podSubnet)
	routePodSubnets(t, l.Nodes, podSubnet6)
	for _, v6 := range []bool{false, true} {
		m := CheckMatrixFamily(context.Background(), pods, 20*time.Second, v6)
		if !m.OK() {
			t.Fatalf("%s after routes, failing pairs: %v\n%s", familyName(v6), m.Failed(), m)
		}
		t.Logf("%s:\n%s", familyName(v6), m)
	}

	// A removed pod's addresses of both families are free again.
	gone := pods[1]
	if err := gone.Remove(); err != nil {
		t.Fatal(err)
	}
	again, err := l.Nodes[0].AddPod("d1c", podSubnet(1), podSubnet6(1))
	if err != nil {
		t.Fatal(err)
	}
	if again.IP != gone.IP || again.IP6 != gone.IP6 {
		t.Errorf("after removing %s (%s, %s) the next pod got %s, %s", gone.Name, gone.IP, gone.IP6, again.IP, again.IP6)
	}
}

// TestDirectPodsIPv6Only: pods with an IPv6 subnet only have no IPv4
// address at all, and reach each other over IPv6 once routed.
func TestDirectPodsIPv6Only(t *testing.T) {
	l := New(t, Options{Prefix: testPrefix, Nodes: 2})
	var pods []*Pod
	for _, n := range l.Nodes {
		p, err := n.AddPod(fmt.Sprintf("six%d", n.Index), podSubnet6(n.Index))
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
		if p.IP.IsValid() || p.Subnet.IsValid() || p.Gateway.IsValid() || !podSubnet6(n.Index).Contains(p.IP6) {
			t.Errorf("pod %s: IPv4 %s %s %s, IPv6 %s; want no IPv4, IPv6 in %s", p.Name, p.IP, p.Subnet, p.Gateway, p.IP6, podSubnet6(n.Index))
		}
		nl, err := p.Netlink()
		if err != nil {
			t.Fatal(err)
		}
		eth0, err := nl.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		if v4, err := nl.AddrList(eth0, netlink.FAMILY_V4); err != nil || len(v4) != 0 {
			t.Errorf("pod %s: IPv4 addresses %v %v, want none", p.Name, v4, err)
		}
		nl.Close()
	}
	if _, err := l.Nodes[0].AddPod("dual", podSubnet(1), podSubnet6(1)); err == nil {
		t.Error("a dual-stack pod on an IPv6-only node was accepted")
	}

	v4 := CheckMatrix(context.Background(), pods, time.Second)
	if len(v4.Failed()) != 2 || !strings.Contains(v4.Failed()[0].Err.Error(), "has no IPv4 address") {
		t.Errorf("IPv4 matrix of IPv6-only pods: %v; want both pairs failing for want of an address", v4.Failed())
	}
	if before := CheckMatrixFamily(context.Background(), pods, 1500*time.Millisecond, true); len(before.Failed()) != 2 {
		t.Fatalf("before routes, IPv6 pairs failing: %v, want both\n%s", before.Failed(), before)
	}
	routePodSubnets(t, l.Nodes, podSubnet6)
	if m := CheckMatrixFamily(context.Background(), pods, 20*time.Second, true); !m.OK() {
		t.Fatalf("after routes, failing pairs: %v\n%s", m.Failed(), m)
	}
}

// TestCNIPodsDualStack: the real flannel -> bridge -> host-local plugins
// give pods an address of each family from a dual-stack subnet.env, and an
// IPv6 address only from an IPv6-only one.
func TestCNIPodsDualStack(t *testing.T) {
	l := New(t, Options{Prefix: testPrefix, Nodes: 3})
	for _, n := range l.Nodes[:2] {
		if err := os.WriteFile(n.SubnetEnv, []byte(dualStackSubnetEnv(n.Index)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sixOnly := l.Nodes[2]
	env := fmt.Sprintf("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=%s1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", podSubnet6(3).Addr())
	if err := os.WriteFile(sixOnly.SubnetEnv, []byte(env), 0o644); err != nil {
		t.Fatal(err)
	}

	pods := addCNIPods(t, l)
	for _, p := range pods {
		n := p.Node
		wantGW6 := podSubnet6(n.Index).Addr().Next()
		if p.Subnet6 != podSubnet6(n.Index) || !p.Subnet6.Contains(p.IP6) || p.Gateway6 != wantGW6 {
			t.Errorf("pod %s: IPv6 %s in %s via %s; want in %s via %s", p.Name, p.IP6, p.Subnet6, p.Gateway6, podSubnet6(n.Index), wantGW6)
		}
		wantV4 := n != sixOnly
		if p.IP.IsValid() != wantV4 || (wantV4 && (p.Subnet != podSubnet(n.Index) || !p.Subnet.Contains(p.IP))) {
			t.Errorf("pod %s on %s: IPv4 %s in %s; want one in %s: %v", p.Name, n.Name, p.IP, p.Subnet, podSubnet(n.Index), wantV4)
		}
		for _, a := range []netip.Addr{p.IP, p.IP6} {
			if !a.IsValid() {
				continue
			}
			owner, err := os.ReadFile(filepath.Join(n.IPAMDataDir(), CNINetworkName, a.String()))
			if err != nil || !strings.Contains(string(owner), p.ContainerID) {
				t.Errorf("host-local record of %s: %q %v", a, owner, err)
			}
		}
		if addrs := addrs6(t, &p.Host, "eth0", false); len(addrs) != 1 || addrs[0].Flags&unix.IFA_F_TENTATIVE != 0 {
			t.Errorf("pod %s: IPv6 addresses %v, want one, not tentative", p.Name, addrs)
		}
		// flannel's route to the whole IPv6 network via the bridge.
		if gw := routeVia(t, &p.Host, netip.MustParseAddr("fd00:10:244:c8::9")); !gw.Equal(net.IP(wantGW6.AsSlice())) {
			t.Errorf("pod %s: route into the IPv6 cluster network via %v, want %s", p.Name, gw, wantGW6)
		}
		if err := p.PingWithin(p.Gateway6, 10*time.Second); err != nil {
			t.Errorf("pod %s to its bridge over IPv6: %v", p.Name, err)
		}
	}
	if t.Failed() {
		return
	}

	routePodSubnets(t, l.Nodes, podSubnet)
	routePodSubnets(t, l.Nodes, podSubnet6)
	if m := CheckMatrixFamily(context.Background(), pods, 20*time.Second, true); !m.OK() {
		t.Fatalf("IPv6, failing pairs: %v\n%s", m.Failed(), m)
	}
	if m := CheckMatrix(context.Background(), pods[:4], 20*time.Second); !m.OK() {
		t.Fatalf("IPv4 between the dual-stack pods, failing pairs: %v\n%s", m.Failed(), m)
	}

	// CNI DEL releases both addresses.
	gone := pods[0]
	if err := gone.Remove(); err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{gone.IP, gone.IP6} {
		if _, err := os.Stat(filepath.Join(gone.Node.IPAMDataDir(), CNINetworkName, a.String())); err == nil {
			t.Errorf("host-local still holds %s after DEL", a)
		}
	}
}

// TestPingerIPv6 counts exactly over ICMPv6: an ip6tables rule inside the
// peer drops echo requests for a while, and what the pinger counts lost is
// exactly what the rule dropped, what it counts received exactly what the
// peer answered.
func TestPingerIPv6(t *testing.T) {
	l := New(t, Options{Prefix: testPrefix, Nodes: 2})
	a, b := l.Nodes[0], l.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ip6tables := func(args ...string) string {
		t.Helper()
		out, err := b.Exec(ctx, append([]string{"ip6tables", "-w"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}

	p, err := a.StartPinger(b.IP6, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WaitReceived(ctx, 10); err != nil {
		t.Fatal(err)
	}
	echoes := []string{"-p", "ipv6-icmp", "--icmpv6-type", "echo-request", "-s", a.IP6.String()}
	ip6tables(append([]string{"-I", "INPUT"}, append(echoes, "-j", "DROP")...)...)
	for p.Stats().Lost < 20 {
		select {
		case <-ctx.Done():
			t.Fatalf("no losses while %s drops echo requests: %s", b.Name, p.Stats())
		case <-time.After(10 * time.Millisecond):
		}
	}
	// An ACCEPT ahead of the DROP ends the outage and freezes its count.
	ip6tables(append([]string{"-I", "INPUT", "1"}, append(echoes, "-j", "ACCEPT")...)...)
	before := p.Stats().Received
	if err := p.WaitReceived(ctx, before+10); err != nil {
		t.Fatal(err)
	}
	st := p.Stop()
	t.Logf("with an outage: %s", st)
	if st.Lost < 20 || st.Sent != st.Received+st.Lost || st.MaxConsecutiveLost < 20 || st.SendErrors != 0 || st.Duplicates != 0 {
		t.Fatalf("counts: %s", st)
	}

	dropped := -1
	for _, line := range strings.Split(ip6tables("-L", "INPUT", "-n", "-v", "-x"), "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[2] == "DROP" {
			fmt.Sscan(f[0], &dropped)
		}
	}
	out, err := b.Exec(ctx, "cat", "/proc/net/snmp6")
	if err != nil {
		t.Fatal(err)
	}
	inEchos, outReplies := snmp6(t, out, "Icmp6InEchos"), snmp6(t, out, "Icmp6OutEchoReplies")
	if dropped != st.Lost || inEchos != st.Received || outReplies != st.Received {
		t.Fatalf("%s dropped %d echo requests, took in %d, answered %d; the pinger counts %s",
			b.Name, dropped, inEchos, outReplies, st)
	}
}

// snmp6 reads one counter of /proc/net/snmp6.
func snmp6(t *testing.T, table, name string) int {
	t.Helper()
	for _, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == name {
			var v int
			if _, err := fmt.Sscan(f[1], &v); err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return v
		}
	}
	t.Fatalf("no %s in /proc/net/snmp6", name)
	return 0
}

// TestPingICMPErrors: a ping to where the gateway has no route ends with
// the gateway's destination unreachable, over either family: the quoted
// echo request is recognised as ours.
func TestPingICMPErrors(t *testing.T) {
	l := New(t, Options{Prefix: testPrefix, Nodes: 1})
	n := l.Nodes[0]
	for _, c := range []struct {
		dst, gw netip.Addr
	}{
		{netip.MustParseAddr("198.19.77.1"), Gateway0IP},
		{netip.MustParseAddr("fd00:198:77::1"), Gateway0IPv6},
	} {
		err := n.PingWithin(c.dst, 1500*time.Millisecond)
		if err == nil || !strings.Contains(err.Error(), "destination unreachable") || !strings.Contains(err.Error(), "from "+c.gw.String()) {
			t.Errorf("ping %s: %v; want destination unreachable from %s", c.dst, err, c.gw)
		}
	}
}
