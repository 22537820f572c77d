package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/overlayd/overlayd/backend/vxlan"
	harness "github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/lab"
)

const annotationPrefix = "overlayd.io/"

// peerLease is what the API says about a node: its subnet and what it
// published.
type peerLease struct {
	node        string
	subnet      netip.Prefix // IPv4; invalid on an IPv6-only node
	publicIP    netip.Addr
	backendType string
	vtepMAC     string
	vni, port   int
	// IPv6, in a cluster with IPv6: invalid otherwise.
	subnet6   netip.Prefix
	publicIP6 netip.Addr
	vtepMAC6  string
}

// family is one address family of a lease: the fields of
// wantKernelState's per-family work.
type leaseFamily struct {
	v6       bool
	subnet   netip.Prefix
	publicIP netip.Addr
	vtepMAC  string
	dev      string // the vxlan device of the family
}

// families are the lease's address families that are complete.
func (l peerLease) families() []leaseFamily {
	var out []leaseFamily
	if l.subnet.IsValid() && l.publicIP.IsValid() {
		out = append(out, leaseFamily{false, l.subnet, l.publicIP, l.vtepMAC, l.vxlanDevice()})
	}
	if l.subnet6.IsValid() && l.publicIP6.IsValid() {
		out = append(out, leaseFamily{true, l.subnet6, l.publicIP6, l.vtepMAC6, l.vxlanDevice6()})
	}
	return out
}

// vxlanDevice is the device that carries traffic of the peer's VNI and port.
func (l peerLease) vxlanDevice() string {
	port := l.port
	if port == 0 {
		port = vxlan.DefaultPort
	}
	return vxlan.DeviceName(l.vni, port)
}

// vxlanDevice6 is the IPv6 device that carries traffic of the peer's VNI
// and port.
func (l peerLease) vxlanDevice6() string {
	port := l.port
	if port == 0 {
		port = vxlan.DefaultPort
	}
	return vxlan.DeviceName6(l.vni, port)
}

// leases reads the lease of every node that has published one from the
// API server.
func (c *cluster) leases() map[string]peerLease {
	c.t.Helper()
	all, err := c.Leases(context.Background())
	if err != nil {
		c.t.Fatal(err)
	}
	out := map[string]peerLease{}
	for _, a := range all {
		v4 := a.Subnet.IsValid() && a.PublicIP.IsValid()
		v6 := a.IPv6Subnet.IsValid() && a.PublicIPv6.IsValid()
		if !v4 && !v6 {
			continue
		}
		l := peerLease{node: a.Node, backendType: a.BackendType}
		var data struct {
			VNI, Port int
			VtepMAC   string
		}
		if v4 {
			l.subnet, l.publicIP = a.Subnet, a.PublicIP
			if json.Unmarshal([]byte(a.BackendData), &data) == nil {
				l.vtepMAC, l.vni, l.port = data.VtepMAC, data.VNI, data.Port
			}
		}
		if v6 {
			l.subnet6, l.publicIP6 = a.IPv6Subnet, a.PublicIPv6
			if json.Unmarshal([]byte(a.BackendV6Data), &data) == nil {
				l.vtepMAC6, l.vni, l.port = data.VtepMAC, data.VNI, data.Port
			}
		}
		out[a.Node] = l
	}
	return out
}

type ipRoute struct {
	Dst      string   `json:"dst"`
	Gateway  string   `json:"gateway"`
	Dev      string   `json:"dev"`
	Flags    []string `json:"flags"`
	Protocol string   `json:"protocol"`
}

type ipNeigh struct {
	Dst    string   `json:"dst"`
	Dev    string   `json:"dev"`
	LLAddr string   `json:"lladdr"`
	State  []string `json:"state"`
}

type fdbEntry struct {
	MAC   string   `json:"mac"`
	Dst   string   `json:"dst"`
	State string   `json:"state"`
	Flags []string `json:"flags"`
}

// overlaydRoutes lists the node's routes with overlayd's protocol.
// overlaydRoutes are the routes overlayd made, of both families.
func overlaydRoutes(t *testing.T, n *lab.Node) []ipRoute {
	return append(ipJSON[ipRoute](t, n, "route", "show", "proto", "79"),
		ipJSON[ipRoute](t, n, "-6", "route", "show", "proto", "79")...)
}

type ipLink struct {
	Name  string `json:"ifname"`
	Alias string `json:"ifalias"`
}

// kernelState describes everything overlayd owns on a node as sorted lines
// (its links, its routes, and the permanent neighbour and FDB entries of its
// vxlan devices), so that it compares as a whole and prints readably.
func kernelState(t *testing.T, n *lab.Node) []string {
	t.Helper()
	for range 10 {
		if lines, ok := kernelSnapshot(t, n); ok {
			return lines
		}
		// A device was deleted while it was being read (an old backend's
		// device going once drained), or a dump was interrupted by a
		// change: read the whole state again.
	}
	t.Fatalf("%s: overlayd's devices kept vanishing while being read", n.Name)
	return nil
}

// kernelSnapshot reads what kernelState describes; ok is false if a listed
// device was gone by the time its entries were read.
func kernelSnapshot(t *testing.T, n *lab.Node) (lines []string, ok bool) {
	t.Helper()
	var vxlanDevs []string
	for _, l := range ipJSON[ipLink](t, n, "link", "show") {
		if l.Alias != "overlayd" {
			continue
		}
		lines = append(lines, "link "+l.Name)
		if strings.HasPrefix(l.Name, "overlay.") || strings.HasPrefix(l.Name, "overlay-v6.") {
			vxlanDevs = append(vxlanDevs, l.Name)
		}
	}
	for _, r := range overlaydRoutes(t, n) {
		line := "route " + r.Dst
		if r.Gateway != "" {
			line += " via " + r.Gateway
		}
		line += " dev " + r.Dev
		if len(r.Flags) > 0 {
			line += " " + strings.Join(r.Flags, ",")
		}
		lines = append(lines, line)
	}
	for _, dev := range vxlanDevs {
		nbs, err := readIPJSON[ipNeigh](n, "neigh", "show", "dev", dev, "nud", "permanent")
		if err != nil && linkGone(t, n, dev) {
			return nil, false
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, nb := range nbs {
			lines = append(lines, fmt.Sprintf("neigh %s lladdr %s dev %s", nb.Dst, nb.LLAddr, dev))
		}
		out, err := n.Exec(context.Background(), "bridge", "-j", "fdb", "show", "dev", dev)
		if err != nil && linkGone(t, n, dev) {
			return nil, false
		}
		if strings.Contains(out, lab.DumpInterrupted) {
			return nil, false // the table changed while it was dumped: read again
		}
		if err != nil {
			t.Fatalf("bridge fdb on %s: %v", n.Name, err)
		}
		var fdb []fdbEntry
		if err := json.Unmarshal([]byte(out), &fdb); err != nil {
			t.Fatalf("bridge fdb on %s: %v\n%s", n.Name, err, out)
		}
		for _, f := range fdb {
			if f.State == "permanent" {
				lines = append(lines, fmt.Sprintf("fdb %s dst %s dev %s", f.MAC, f.Dst, dev))
			}
		}
	}
	sort.Strings(lines)
	return lines, true
}

// linkGone reports whether the node no longer has the link.
func linkGone(t *testing.T, n *lab.Node, name string) bool {
	t.Helper()
	nl, err := n.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	_, err = nl.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	return errors.As(err, &notFound)
}

// wantKernelState is the state a node must have: the device of its own
// backend, and for each peer what reaching it by its published backend
// needs. Peers on another L2 segment cannot be reached by host-gw; with
// vxlan's DirectRouting the node routes on-link peers directly.
func wantKernelState(self peerLease, leases map[string]peerLease, onLink func(netip.Addr) bool, directRouting bool) []string {
	links := map[string]bool{}
	switch self.backendType {
	case "vxlan":
		for _, f := range self.families() {
			links[f.dev] = true
		}
	case "udp":
		links["overlay0"] = true
	}
	var lines []string
	// wireguard's devices and their routes for the whole cluster network,
	// wanted for the node's own backend or for a peer's.
	wireguardDev := func(v6 bool) string {
		dev, network := "overlay-wg", clusterCIDR
		if v6 {
			dev, network = "overlay-wg-v6", clusterCIDR6
		}
		if !links[dev] {
			links[dev] = true
			lines = append(lines, fmt.Sprintf("route %s dev %s", network, dev))
		}
		return dev
	}
	if self.backendType == "wireguard" {
		for _, f := range self.families() {
			wireguardDev(f.v6)
		}
	}
	for name, l := range leases {
		if name == self.node {
			continue
		}
		for _, f := range l.families() {
			if !self.has(f.v6) {
				continue // the peer's family this node does not have
			}
			switch l.backendType {
			case "vxlan":
				if directRouting && self.backendType == "vxlan" && onLink(f.publicIP) {
					lines = append(lines, fmt.Sprintf("route %s via %s dev eth0", f.subnet, f.publicIP))
					continue
				}
				links[f.dev] = true
				vtep := f.subnet.Addr()
				lines = append(lines,
					fmt.Sprintf("route %s via %s dev %s onlink", f.subnet, vtep, f.dev),
					fmt.Sprintf("neigh %s lladdr %s dev %s", vtep, f.vtepMAC, f.dev),
					fmt.Sprintf("fdb %s dst %s dev %s", f.vtepMAC, f.publicIP, f.dev))
			case "host-gw":
				if onLink(f.publicIP) {
					lines = append(lines, fmt.Sprintf("route %s via %s dev eth0", f.subnet, f.publicIP))
				}
			case "udp":
				links["overlay0"] = true
				lines = append(lines, fmt.Sprintf("route %s dev overlay0", f.subnet))
			case "wireguard":
				lines = append(lines, fmt.Sprintf("route %s dev %s", f.subnet, wireguardDev(f.v6)))
			}
		}
	}
	for l := range links {
		lines = append(lines, "link "+l)
	}
	sort.Strings(lines)
	return lines
}

// requireKernelStateMatchesLeases asserts, on every node, that what
// overlayd owns in the kernel is exactly what its own and its peers'
// leases call for: nothing missing, nothing extra.
func (c *cluster) requireKernelStateMatchesLeases() {
	c.t.Helper()
	leases := c.leases()
	for _, n := range c.Lab.Nodes {
		self, live := leases[n.Name]
		if !live || !c.Agents[n.Name].Running() {
			continue
		}
		onLink := func(a netip.Addr) bool { return c.segmentOf(a) == n.Segment }
		want := strings.Join(wantKernelState(self, leases, onLink, c.directRouting[n.Name]), "\n")
		harness.Eventually(c.t, 30*time.Second, "kernel state of "+n.Name+" matches the leases", func() (bool, string) {
			got := strings.Join(kernelState(c.t, n), "\n")
			return got == want, fmt.Sprintf("have:\n%s\nwant:\n%s", got, want)
		})
	}
}

// has reports whether the lease has the family (v6: IPv6).
func (l peerLease) has(v6 bool) bool {
	if v6 {
		return l.subnet6.IsValid() && l.publicIP6.IsValid()
	}
	return l.subnet.IsValid() && l.publicIP.IsValid()
}

// segmentOf is the underlay segment of a node address, of either family.
func (c *cluster) segmentOf(a netip.Addr) int {
	for _, n := range c.Lab.Nodes {
		if n.IP == a || n.IP6 == a {
			return n.Segment
		}
	}
	return -1
}
