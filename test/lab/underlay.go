package lab

import (
	"fmt"
	"net"
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
// ("eth0") at its underlay address (Host.IP), a default route via its segment's
// gateway, and a directory of its own.
type Node struct {
	Host
	Name    string // Kubernetes node name, "node-<Index>"
	Index   int    // 1-based, over all nodes
	Segment int    // 0: 198.18.0.0/24, 1: 198.19.0.0/24 (behind the gateway)
	Gateway netip.Addr

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
	podMode   string // "", "direct" or "cni": set by the first pod
	podSubnet netip.Prefix
	usedIPs   map[netip.Addr]bool
}

func segmentOf(segment int) (netip.Prefix, netip.Addr) {
	if segment == 1 {
		return Segment1, Gateway1IP
	}
	return Segment0, Gateway0IP
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
		seg, gw := segmentOf(s)
		if _, err := l.plug(l.Gateway, "eth"+strconv.Itoa(s), s, "gw"+strconv.Itoa(s), netip.PrefixFrom(gw, seg.Bits())); err != nil {
			return err
		}
	}
	if err := l.Gateway.SetSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	if l.opts.ExternalHost {
		if l.External, err = l.newHost("ext"); err != nil {
			return err
		}
		l.External.IP = ExternalIP
		if err := l.plugWithDefault(l.External, 0, "ext", netip.PrefixFrom(ExternalIP, Segment0.Bits())); err != nil {
			return err
		}
	}
	return nil
}

// addNode creates node k on a segment.
func (l *Lab) addNode(k, segment int) error {
	seg, gw := segmentOf(segment)
	addr := seg.Addr().As4()
	addr[3] = byte(nodeHostStart + k)
	n := &Node{Name: "node-" + strconv.Itoa(k), Index: k, Segment: segment, Gateway: gw, usedIPs: map[netip.Addr]bool{}}
	n.IP = netip.AddrFrom4(addr)
	if err := l.initHost(&n.Host, n.Name); err != nil {
		return err
	}

	n.Dir = filepath.Join(l.Dir, n.Name)
	if err := os.MkdirAll(n.Dir, 0o755); err != nil {
		return err
	}
	n.SubnetEnv = filepath.Join(n.Dir, "subnet.env")
	if err := l.plugWithDefault(&n.Host, segment, n.Name, netip.PrefixFrom(n.IP, seg.Bits())); err != nil {
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

// plugWithDefault plugs h's eth0 into a segment and routes everything else
// via the segment's gateway.
func (l *Lab) plugWithDefault(h *Host, segment int, port string, addr netip.Prefix) error {
	link, err := l.plug(h, UnderlayIface, segment, port, addr)
	if err != nil {
		return err
	}
	_, gw := segmentOf(segment)
	nl, err := h.Netlink()
	if err != nil {
		return err
	}
	defer nl.Close()
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.IP(gw.AsSlice())}
	if err := nl.RouteAdd(route); err != nil {
		return fmt.Errorf("%s: adding default route via %s: %w", h.NS, gw, err)
	}
	return nil
}

// plug connects h to a segment bridge with a veth: ifname with addr inside
// h, port (a bridge port) inside the underlay. Both ends are created in
// lab namespaces directly; nothing passes through the host's namespace.
func (l *Lab) plug(h *Host, ifname string, segment int, port string, addr netip.Prefix) (netlink.Link, error) {
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
	if err := nl.AddrAdd(link, &netlink.Addr{IPNet: prefixIPNet(addr)}); err != nil {
		return nil, fmt.Errorf("%s: adding %s to %s: %w", h.NS, addr, ifname, err)
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

// prefixIPNet is an address with its prefix length (not masked), as
// netlink wants for interface addresses.
func prefixIPNet(p netip.Prefix) *net.IPNet {
	bits := p.Addr().BitLen()
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)}
}
