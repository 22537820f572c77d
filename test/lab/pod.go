package lab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/overlayd/overlayd/pkg/ip"
)

// PodBridge is the bridge in each node that pods attach to, as the CNI
// bridge plugin names it.
const PodBridge = "cni0"

// Pod is a namespace with "eth0" attached to its node's PodBridge and a
// default route of each of its families via the bridge's address. Host.IP
// is its IPv4 address, Host.IP6 its IPv6 address; an IPv6-only pod has no
// IP, an IPv4-only pod no IP6.
type Pod struct {
	Host
	Name     string
	Node     *Node
	Subnet   netip.Prefix // the node's IPv4 pod subnet; the zero Prefix if the pod has no IPv4
	Gateway  netip.Addr   // the bridge's IPv4 address
	Subnet6  netip.Prefix // the node's IPv6 pod subnet; the zero Prefix if the pod has no IPv6
	Gateway6 netip.Addr   // the bridge's IPv6 address
	// ContainerID is the CNI container id; empty for directly attached pods.
	ContainerID string

	hostVeth string // node side of a direct pod's veth
}

var podNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$`)

// reservePod checks the name and claims it and the node's attach mode.
func (l *Lab) reservePod(n *Node, name, mode string) error {
	if !podNameRE.MatchString(name) {
		return fmt.Errorf("pod name %q: want a lowercase DNS label of at most 40 characters", name)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("lab is closed")
	}
	if _, ok := l.pods[name]; ok {
		return fmt.Errorf("pod %s exists already", name)
	}
	if n.podMode != "" && n.podMode != mode {
		return fmt.Errorf("%s: pod %s: the node's pods are attached %s, not %s; use one way per node", n.Name, name, n.podMode, mode)
	}
	n.podMode = mode
	l.pods[name] = nil // claimed; filled in when attached
	return nil
}

// registerPod records an attached pod, or undoes a failed attach.
func (l *Lab) registerPod(p *Pod, err error) (*Pod, error) {
	if err != nil && p.NS != "" {
		if derr := p.delete(); derr != nil {
			err = fmt.Errorf("%w (cleanup: %v)", err, derr)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		delete(l.pods, p.Name)
		return nil, err
	}
	l.pods[p.Name] = p
	return p, nil
}

// AddPod attaches a pod directly, as a minimal bridge CNI would, with the
// families of the subnets given: one IPv4 subnet, one IPv6 subnet, or one
// of each (dual-stack). The first pod sets the node's pod subnets, creates
// PodBridge with each subnet's first host address and enables forwarding of
// those families in the node; each pod gets the next free address of each
// subnet and a default route of each family via the bridge. Every direct
// pod of a node must use the same subnets.
func (n *Node) AddPod(name string, subnets ...netip.Prefix) (*Pod, error) {
	l := n.lab
	subs, err := newPodSubnets(subnets)
	if err != nil {
		return nil, fmt.Errorf("%s: pod %s: %w", n.Name, name, err)
	}
	if err := l.reservePod(n, name, "direct"); err != nil {
		return nil, err
	}
	p := &Pod{Name: name, Node: n, Subnet: subs.v4, Subnet6: subs.v6}
	if subs.v4.IsValid() {
		p.Gateway = ip.FirstHost(subs.v4)
	}
	if subs.v6.IsValid() {
		p.Gateway6 = ip.FirstHost(subs.v6)
	}
	n.attachMu.Lock()
	defer n.attachMu.Unlock()
	return l.registerPod(p, l.attachDirect(n, p, subs))
}

func (l *Lab) attachDirect(n *Node, p *Pod, subs podSubnets) (err error) {
	l.mu.Lock()
	first := n.podSubnets == podSubnets{}
	switch {
	case first:
		n.podSubnets = subs
	case n.podSubnets != subs:
		l.mu.Unlock()
		return fmt.Errorf("%s: pod %s: subnets %s, but the node's pods use %s", n.Name, p.Name, subs, n.podSubnets)
	}
	defer func() {
		if err != nil {
			l.mu.Lock()
			delete(n.usedIPs, p.IP)
			delete(n.usedIPs, p.IP6)
			l.mu.Unlock()
		}
	}()
	if subs.v4.IsValid() {
		p.IP, err = n.allocateIP(subs.v4)
	}
	if err == nil && subs.v6.IsValid() {
		p.IP6, err = n.allocateIP(subs.v6)
	}
	l.mu.Unlock()
	if err != nil {
		return err
	}
	if first {
		if err := n.ensurePodBridge(subs, l.opts.PodMTU); err != nil {
			return err
		}
	}
	if err := l.initHost(&p.Host, "pod-"+p.Name); err != nil {
		return err
	}
	if err := n.plugPod(p, l.opts.PodMTU); err != nil {
		return err
	}
	if !subs.v6.IsValid() {
		return nil
	}
	// The bridge has its link-local address once its first port is up.
	if err := n.settleIPv6(PodBridge); err != nil {
		return err
	}
	return p.settleIPv6("eth0")
}

// allocateIP returns the lowest free address after the gateway. lab.mu held.
func (n *Node) allocateIP(subnet netip.Prefix) (netip.Addr, error) {
	last := ip.Broadcast(subnet).Prev()
	for a := ip.FirstHost(subnet).Next(); a.IsValid() && a.Compare(last) <= 0; a = a.Next() {
		if !n.usedIPs[a] {
			n.usedIPs[a] = true
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%s: pod subnet %s is full", n.Name, subnet)
}

// ensurePodBridge creates PodBridge with each subnet's first host address
// and turns forwarding of those families on, as the bridge plugin does for
// a gateway bridge.
func (n *Node) ensurePodBridge(subs podSubnets, mtu int) error {
	nl, err := n.Netlink()
	if err != nil {
		return err
	}
	defer nl.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: PodBridge, MTU: mtu}}
	if err := nl.LinkAdd(br); err != nil {
		return fmt.Errorf("%s: adding bridge %s: %w", n.Name, PodBridge, err)
	}
	var gateways []netip.Prefix
	for _, sub := range subs.list() {
		gateways = append(gateways, netip.PrefixFrom(ip.FirstHost(sub), sub.Bits()))
	}
	if err := n.addAddrs(nl, br, gateways); err != nil {
		return err
	}
	if err := nl.LinkSetUp(br); err != nil {
		return fmt.Errorf("%s: setting %s up: %w", n.Name, PodBridge, err)
	}
	if subs.v4.IsValid() {
		if err := n.SetSysctl("net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
	}
	if subs.v6.IsValid() {
		return n.SetSysctl("net/ipv6/conf/all/forwarding", "1")
	}
	return nil
}

// plugPod connects a pod's eth0 to the node's bridge.
func (n *Node) plugPod(p *Pod, mtu int) error {
	podNS, err := netns.GetFromPath(p.Path())
	if err != nil {
		return fmt.Errorf("opening namespace %s: %w", p.NS, err)
	}
	defer podNS.Close()
	nl, err := n.Netlink()
	if err != nil {
		return err
	}
	defer nl.Close()
	sum := sha256.Sum256([]byte(p.NS))
	hostSide := "veth" + hex.EncodeToString(sum[:4])
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: hostSide, MTU: mtu},
		PeerName:      "eth0",
		PeerMTU:       uint32(mtu),
		PeerNamespace: netlink.NsFd(podNS),
	}
	if err := nl.LinkAdd(veth); err != nil {
		return fmt.Errorf("%s: adding veth %s for pod %s: %w", n.Name, hostSide, p.Name, err)
	}
	p.hostVeth = hostSide
	br, err := nl.LinkByName(PodBridge)
	if err != nil {
		return fmt.Errorf("%s: %s: %w", n.Name, PodBridge, err)
	}
	link, err := nl.LinkByName(hostSide)
	if err == nil {
		err = nl.LinkSetMaster(link, br)
	}
	if err == nil {
		err = nl.LinkSetUp(link)
	}
	if err != nil {
		return fmt.Errorf("%s: attaching %s to %s: %w", n.Name, hostSide, PodBridge, err)
	}

	pnl, err := p.Netlink()
	if err != nil {
		return err
	}
	defer pnl.Close()
	eth0, err := pnl.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("pod %s: eth0: %w", p.Name, err)
	}
	var addrs []netip.Prefix
	var gateways []netip.Addr
	if p.IP.IsValid() {
		addrs, gateways = append(addrs, netip.PrefixFrom(p.IP, p.Subnet.Bits())), append(gateways, p.Gateway)
	}
	if p.IP6.IsValid() {
		addrs, gateways = append(addrs, netip.PrefixFrom(p.IP6, p.Subnet6.Bits())), append(gateways, p.Gateway6)
	}
	if err := p.addAddrs(pnl, eth0, addrs); err != nil {
		return err
	}
	if err := pnl.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("pod %s: setting eth0 up: %w", p.Name, err)
	}
	for _, gw := range gateways {
		if err := addDefaultRoute(pnl, &p.Host, eth0, gw); err != nil {
			return err
		}
	}
	return nil
}

// Remove detaches the pod (CNI DEL for CNI pods, releasing its address;
// deleting the veth for direct pods) and deletes its namespace. Detaching
// first makes the pod unreachable at once: the kernel destroys a deleted
// namespace's interfaces only some time later.
func (p *Pod) Remove() error {
	l := p.Node.lab
	var errs []error
	if p.ContainerID != "" {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := l.cniDel(ctx, p); err != nil {
			errs = append(errs, err)
		}
	} else if p.hostVeth != "" {
		if err := p.Node.deleteLink(p.hostVeth); err != nil {
			errs = append(errs, err)
		}
	}
	if err := p.delete(); err != nil {
		errs = append(errs, err)
	}
	l.mu.Lock()
	delete(l.pods, p.Name)
	if p.ContainerID == "" {
		delete(p.Node.usedIPs, p.IP)
		delete(p.Node.usedIPs, p.IP6)
	}
	l.mu.Unlock()
	return errors.Join(errs...)
}

func (n *Node) deleteLink(name string) error {
	nl, err := n.Netlink()
	if err != nil {
		return err
	}
	defer nl.Close()
	link, err := nl.LinkByName(name)
	if err == nil {
		err = nl.LinkDel(link)
	}
	var notFound netlink.LinkNotFoundError
	if err != nil && !errors.As(err, &notFound) {
		return fmt.Errorf("%s: deleting %s: %w", n.Name, name, err)
	}
	return nil
}
