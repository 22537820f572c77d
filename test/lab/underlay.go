package lab

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// UnderlayIface is a node's link to the underlay, holding its underlay
// address: what an agent's --iface names.
const UnderlayIface = "eth0"

// Node is a Kubernetes node: a namespace on the underlay with UnderlayIface
// ("eth0") at its underlay addresses (Host.IP, Host.IP6), a default route of
// each family via its segment's gateway, and a directory of its own.
type Node struct {
	Host
	Name     string // Kubernetes node name, "node-<Index>"
	Index    int    // 1-based, over all nodes
	Segment  int    // 0: 198.18.0.0/24 and fd00:198:18::/64, 1: 198.19.0.0/24 and fd00:198:19::/64 (behind the gateway)
	Gateway  netip.Addr
	Gateway6 netip.Addr

	// Dir holds the node's own files: its kubeconfig, the subnet.env the
	// CNI flannel plugin reads (SubnetEnv), CNI state and process logs.
	Dir       string
	SubnetEnv string
	// Kubeconfig reaches the control plane through APIServer, the
	// forwarder inside the node; empty without Options.ControlPlane.
	Kubeconfig string
	APIServer  string

	attachMu sync.Mutex // one pod attach at a time per node: the first creates the bridge
	// guarded by lab.mu
	podMode    string // "", "direct" or "cni": set by the first pod
	podSubnets podSubnets
	usedIPs    map[netip.Addr]bool
	forwarders []*forwarder
}

// segment is one L2 segment of the underlay, both families.
type segment struct {
	v4, v6   netip.Prefix
	gw4, gw6 netip.Addr
}

func segmentOf(index int) segment {
	if index == 1 {
		return segment{v4: Segment1, v6: Segment1v6, gw4: Gateway1IP, gw6: Gateway1IPv6}
	}
	return segment{v4: Segment0, v6: Segment0v6, gw4: Gateway0IP, gw6: Gateway0IPv6}
}

// hostAddrs are the addresses of host number host (e.g. 11, as in .11) on
// the segment, each with the segment's prefix length.
func (s segment) hostAddrs(host int) []netip.Prefix {
	v4 := s.v4.Addr().As4()
	v4[3] = byte(host)
	// "fd00:198:18::" + "11": the IPv4 number written as the last group.
	v6 := netip.MustParseAddr(s.v6.Addr().String() + strconv.Itoa(host))
	return []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4(v4), s.v4.Bits()), netip.PrefixFrom(v6, s.v6.Bits())}
}

// buildUnderlay creates the underlay namespace with one bridge per
// segment, the gateway and the external host.
func (l *Lab) buildUnderlay() error {
	var err error
	if l.Underlay, err = l.newHost("underlay"); err != nil {
		return err
	}
	segments := 1
	if l.opts.RoutedNodes > 0 {
		segments = 2
	}
	nl, err := l.Underlay.Netlink()
	if err != nil {
		return err
	}
	defer nl.Close()
	for s := range segments {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br" + strconv.Itoa(s), MTU: UnderlayMTU}}
		if err := nl.LinkAdd(br); err != nil {
			return fmt.Errorf("underlay: adding bridge %s: %w", br.Name, err)
		}
		if err := nl.LinkSetUp(br); err != nil {
			return fmt.Errorf("underlay: setting %s up: %w", br.Name, err)
		}
	}

	if l.Gateway, err = l.newHost("gw"); err != nil {
		return err
	}
	for s := range segments {
		seg := segmentOf(s)
		gwAddrs := []netip.Prefix{netip.PrefixFrom(seg.gw4, seg.v4.Bits()), netip.PrefixFrom(seg.gw6, seg.v6.Bits())}
		if _, err := l.plug(l.Gateway, "eth"+strconv.Itoa(s), s, "gw"+strconv.Itoa(s), gwAddrs); err != nil {
			return err
		}
	}
	for _, key := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
		if err := l.Gateway.SetSysctl(key, "1"); err != nil {
			return err
		}
	}
	if l.opts.ExternalHost {
		if l.External, err = l.newHost("ext"); err != nil {
			return err
		}
		l.External.IP, l.External.IP6 = ExternalIP, ExternalIPv6
		addrs := []netip.Prefix{netip.PrefixFrom(ExternalIP, Segment0.Bits()), netip.PrefixFrom(ExternalIPv6, Segment0v6.Bits())}
		if err := l.plugWithDefault(l.External, 0, "ext", addrs); err != nil {
			return err
		}
	}
	return nil
}

// settleUnderlay waits until the IPv6 addresses of every underlay link
// (but the bridge ports, which have none of the lab's) are usable.
func (l *Lab) settleUnderlay() error {
	gwLinks := []string{"eth0"}
	if l.opts.RoutedNodes > 0 {
		gwLinks = append(gwLinks, "eth1")
	}
	if err := l.Gateway.settleIPv6(gwLinks...); err != nil {
		return err
	}
	var hosts []*Host
	if l.External != nil {
		hosts = append(hosts, l.External)
	}
	for _, n := range l.Nodes {
		hosts = append(hosts, &n.Host)
	}
	for _, h := range hosts {
		if err := h.settleIPv6(UnderlayIface); err != nil {
			return err
		}
	}
	return nil
}

// addNode creates node k on a segment.
func (l *Lab) addNode(k, segmentIndex int) error {
	seg := segmentOf(segmentIndex)
	addrs := seg.hostAddrs(nodeHostStart + k)
	n := &Node{Name: "node-" + strconv.Itoa(k), Index: k, Segment: segmentIndex, Gateway: seg.gw4, Gateway6: seg.gw6, usedIPs: map[netip.Addr]bool{}}
	n.IP, n.IP6 = addrs[0].Addr(), addrs[1].Addr()
	if err := l.initHost(&n.Host, n.Name); err != nil {
		return err
	}

	n.Dir = filepath.Join(l.Dir, n.Name)
	if err := os.MkdirAll(n.Dir, 0o755); err != nil {
		return err
	}
	n.SubnetEnv = filepath.Join(n.Dir, "subnet.env")
	if err := l.plugWithDefault(&n.Host, segmentIndex, n.Name, addrs); err != nil {
		return err
	}
	if l.opts.ControlPlane != nil {
		if err := l.connectAPI(n); err != nil {
			return err
		}
	}
	l.Nodes = append(l.Nodes, n)
	return nil
}

// plugWithDefault plugs h's eth0 into a segment and routes everything else,
// both families, via the segment's gateway.
func (l *Lab) plugWithDefault(h *Host, segmentIndex int, port string, addrs []netip.Prefix) error {
	link, err := l.plug(h, UnderlayIface, segmentIndex, port, addrs)
	if err != nil {
		return err
	}
	seg := segmentOf(segmentIndex)
	nl, err := h.Netlink()
	if err != nil {
		return err
	}
	defer nl.Close()
	for _, gw := range []netip.Addr{seg.gw4, seg.gw6} {
		if err := addDefaultRoute(nl, h, link, gw); err != nil {
			return err
		}
	}
	return nil
}

// plug connects h to a segment bridge with a veth: ifname with addrs inside
// h, port (a bridge port) inside the underlay. Both ends are created in
// lab namespaces directly; nothing passes through the host's namespace.
func (l *Lab) plug(h *Host, ifname string, segment int, port string, addrs []netip.Prefix) (netlink.Link, error) {
	ul, err := netns.GetFromPath(l.Underlay.Path())
	if err != nil {
		return nil, fmt.Errorf("opening underlay namespace: %w", err)
	}
	defer ul.Close()
	nl, err := h.Netlink()
	if err != nil {
		return nil, err
	}
	defer nl.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: ifname, MTU: UnderlayMTU},
		PeerName:      port,
		PeerMTU:       UnderlayMTU,
		PeerNamespace: netlink.NsFd(ul),
	}
	if err := nl.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("%s: adding veth %s (peer %s in underlay): %w", h.NS, ifname, port, err)
	}

	unl, err := l.Underlay.Netlink()
	if err != nil {
		return nil, err
	}
	defer unl.Close()
	bridgeName := "br" + strconv.Itoa(segment)
	br, err := unl.LinkByName(bridgeName)
	if err != nil {
		return nil, fmt.Errorf("underlay: bridge %s: %w", bridgeName, err)
	}
	p, err := unl.LinkByName(port)
	if err != nil {
		return nil, fmt.Errorf("underlay: port %s: %w", port, err)
	}
	if err := unl.LinkSetMaster(p, br); err != nil {
		return nil, fmt.Errorf("underlay: attaching %s to %s: %w", port, bridgeName, err)
	}
	if err := unl.LinkSetUp(p); err != nil {
		return nil, fmt.Errorf("underlay: setting %s up: %w", port, err)
	}

	link, err := nl.LinkByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", h.NS, ifname, err)
	}
	if err := h.addAddrs(nl, link, addrs); err != nil {
		return nil, err
	}
	if err := nl.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("%s: setting %s up: %w", h.NS, ifname, err)
	}
	return link, nil
}

// SetUnderlayMTU sets the MTU of the node's link to the underlay, both ends
// of it (UnderlayIface and its bridge port), e.g. to see what an agent makes
// of a jumbo-frame or a smaller underlay. Other nodes' links keep
// UnderlayMTU, so traffic to them is bounded by the smaller MTU.
func (n *Node) SetUnderlayMTU(mtu int) error {
	for _, end := range []struct {
		h    *Host
		name string
	}{{&n.Host, UnderlayIface}, {n.lab.Underlay, n.Name}} {
		nl, err := end.h.Netlink()
		if err != nil {
			return err
		}
		link, err := nl.LinkByName(end.name)
		if err == nil {
			err = nl.LinkSetMTU(link, mtu)
		}
		nl.Close()
		if err != nil {
			return fmt.Errorf("%s: setting the MTU of %s to %d: %w", end.h.NS, end.name, mtu, err)
		}
	}
	return nil
}
