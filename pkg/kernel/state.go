// Package kernel describes the kernel networking state overlayd wants
// (links, routes, neighbour and FDB entries) and makes the kernel match it.
//
// Ownership is visible in the kernel itself, so that a restarted agent can
// tell its own entries from everyone else's: links overlayd creates carry the
// alias LinkAlias, routes carry the protocol number RouteProtocol, and the
// neighbour and FDB entries that matter are the permanent ones on overlayd's
// links. Nothing else is ever changed.
package kernel

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
)

// RouteProtocol marks routes as overlayd's (`ip route show proto 79`).
const RouteProtocol = 79

// LinkAlias marks links as overlayd's (`ip link show` prints "alias overlayd").
const LinkAlias = "overlayd"

// State is a desired (or observed) set of kernel entries.
type State struct {
	Links  []Link
	Routes []Route
	Neighs []Neigh
	FDB    []FDBEntry
}

// LinkKind is the type of an overlayd link.
type LinkKind string

const (
	KindVXLAN LinkKind = "vxlan"
	KindTUN   LinkKind = "tun"
	// KindWireGuard is the kernel's WireGuard device; its keys and peers
	// are its datapath's (backend/wireguard), configured through wgctrl.
	KindWireGuard LinkKind = "wireguard"
)

// Link is a device overlayd owns.
type Link struct {
	Name  string
	Kind  LinkKind
	VXLAN VXLAN // for KindVXLAN
	MTU   int
	MAC   net.HardwareAddr // nil: whatever the kernel chose
	Addrs []netip.Prefix   // exactly these addresses
	// NoRouterAdvertisements: the device ignores IPv6 router
	// advertisements (accept_ra 0), as flanneld sets on its IPv6 tunnel.
	NoRouterAdvertisements bool
}

// VXLAN holds the settings fixed at creation; a device whose settings
// differ is replaced.
type VXLAN struct {
	VNI      int
	Port     int
	Local    netip.Addr // source address of encapsulated packets
	Underlay string     // device the tunnel is bound to
	GBP      bool
	Learning bool
}

// Route is a main-table route with overlayd's protocol.
type Route struct {
	Dst    netip.Prefix
	Gw     netip.Addr // invalid: a device route
	Dev    string
	OnLink bool
	// Blackhole drops what is routed to Dst (no device, no gateway).
	Blackhole bool
	// Metric is the route's priority; 0 is the kernel's default.
	Metric int
}

// Neigh is a permanent neighbour (ARP/NDP) entry.
type Neigh struct {
	Dev string
	IP  netip.Addr
	MAC net.HardwareAddr
}

// FDBEntry is a permanent forwarding entry of a vxlan device: frames for MAC
// are sent to the VTEP at Dst.
type FDBEntry struct {
	Dev string
	MAC net.HardwareAddr
	Dst netip.Addr
}

func (r Route) String() string {
	if r.Blackhole {
		return fmt.Sprintf("blackhole %s metric %d", r.Dst, r.Metric)
	}
	s := r.Dst.String()
	if r.Gw.IsValid() {
		s += " via " + r.Gw.String()
	}
	s += " dev " + r.Dev
	if r.OnLink {
		s += " onlink"
	}
	return s
}

func (n Neigh) String() string    { return fmt.Sprintf("%s lladdr %s dev %s", n.IP, n.MAC, n.Dev) }
func (f FDBEntry) String() string { return fmt.Sprintf("%s dst %s dev %s", f.MAC, f.Dst, f.Dev) }

// AddLink adds l, or checks that an identical link is already there: two
// parts of a desired state may both need the same device.
func (s *State) AddLink(l Link) error {
	for _, have := range s.Links {
		if have.Name != l.Name {
			continue
		}
		if !have.Equal(l) {
			return fmt.Errorf("link %s is wanted with two different settings", l.Name)
		}
		return nil
	}
	s.Links = append(s.Links, l)
	return nil
}

// Link returns the desired link named name.
func (s *State) Link(name string) (Link, bool) {
	for _, l := range s.Links {
		if l.Name == name {
			return l, true
		}
	}
	return Link{}, false
}

// Equal reports whether l and o are the same device with the same settings.
func (l Link) Equal(o Link) bool {
	return l.Name == o.Name && l.Kind == o.Kind && l.VXLAN == o.VXLAN && l.MTU == o.MTU &&
		l.NoRouterAdvertisements == o.NoRouterAdvertisements &&
		slices.Equal(l.MAC, o.MAC) &&
		(slices.Equal(l.Addrs, o.Addrs) || slices.Equal(sortedPrefixes(l.Addrs), sortedPrefixes(o.Addrs)))
}

func sortedPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := slices.Clone(ps)
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// Validate checks the state for contradictions that would make the kernel
// flap between two answers: one destination routed twice, one neighbour or
// MAC mapped twice.
func (s *State) Validate() error {
	routes := make(map[netip.Prefix]Route, len(s.Routes))
	for _, r := range s.Routes {
		if prev, dup := routes[r.Dst]; dup && prev != r {
			return fmt.Errorf("route %s wanted both as %q and %q", r.Dst, prev, r)
		}
		routes[r.Dst] = r
		if r.Dev == "" && !r.Blackhole {
			return fmt.Errorf("route %s has no device", r.Dst)
		}
	}
	type devAddr struct {
		dev string
		ip  netip.Addr
	}
	neighs := make(map[devAddr]mac48, len(s.Neighs))
	for _, n := range s.Neighs {
		k := devAddr{n.Dev, n.IP}
		mac, _ := toMAC48(n.MAC)
		if prev, dup := neighs[k]; dup && prev != mac {
			return fmt.Errorf("neighbour %s on %s wanted as both %s and %s", n.IP, n.Dev, net.HardwareAddr(prev[:]), n.MAC)
		}
		neighs[k] = mac
	}
	type devMAC struct {
		dev string
		mac mac48
	}
	fdb := make(map[devMAC]netip.Addr, len(s.FDB))
	for _, f := range s.FDB {
		mac, _ := toMAC48(f.MAC)
		k := devMAC{f.Dev, mac}
		if prev, dup := fdb[k]; dup && prev != f.Dst {
			return fmt.Errorf("FDB entry %s on %s wanted to both %s and %s", f.MAC, f.Dev, prev, f.Dst)
		}
		fdb[k] = f.Dst
	}
	return nil
}
