package ip

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// Interface is what interface selection needs to know about one interface.
type Interface struct {
	Name  string
	Index int
	MTU   int
	Up    bool
	Addrs []netip.Prefix // address with its prefix length, as configured
}

// Host is the view of the machine that interface selection depends on.
// The netlink implementation is NewHost; tests pass a table.
type Host interface {
	Interfaces() ([]Interface, error)
	// DefaultRouteIndex returns the interface index of the default route of
	// the family of v6 (false: IPv4).
	DefaultRouteIndex(v6 bool) (int, error)
	// RouteIndex returns the interface the kernel would use to reach dst.
	RouteIndex(dst netip.Addr) (int, error)
}

// SelectOptions are the flags that choose the external interface, with
// flanneld's meaning.
type SelectOptions struct {
	Ifaces        []string // --iface: names or addresses, tried in order
	IfaceRegex    []string // --iface-regex: matched against addresses, then names
	IfaceCanReach string   // --iface-can-reach: the interface routing to this address
	PublicIP      string   // --public-ip
	PublicIPv6    string   // --public-ipv6
	IPv4, IPv6    bool     // which families the network uses
}

// External is the chosen external interface: the underlay overlayd sends
// encapsulated or routed traffic over.
type External struct {
	Iface      Interface
	Addr       netip.Addr // IPv4 address on Iface used as tunnel source
	Addr6      netip.Addr
	PublicIP   netip.Addr // what peers send to; Addr unless --public-ip
	PublicIPv6 netip.Addr
}

// SelectExternal chooses the external interface and addresses the way
// flanneld does: --iface entries in order, else --iface-regex entries in
// order (addresses first, then names), else --iface-can-reach, else the
// interface holding --public-ip (or --public-ipv6), else the interface of
// the default route.
func SelectExternal(opts SelectOptions, host Host) (*External, error) {
	if !opts.IPv4 && !opts.IPv6 {
		return nil, errors.New("neither IPv4 nor IPv6 is enabled")
	}
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	pub4, _ := parseOptionalAddr("--public-ip", opts.PublicIP, false)
	pub6, _ := parseOptionalAddr("--public-ipv6", opts.PublicIPv6, true)
	ifaces, err := host.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("listing interfaces: %w", err)
	}

	iface, byAddr, err := chooseInterface(opts, ifaces, host)
	if err != nil {
		return nil, err
	}
	ext := &External{Iface: iface, PublicIP: pub4, PublicIPv6: pub6}
	if opts.IPv4 {
		if byAddr.Is4() {
			ext.Addr = byAddr
		} else if ext.Addr, err = firstAddr(iface, false); err != nil {
			return nil, err
		}
		if !ext.PublicIP.IsValid() {
			ext.PublicIP = ext.Addr
		}
	}
	if opts.IPv6 {
		if byAddr.Is6() {
			ext.Addr6 = byAddr
		} else if ext.Addr6, err = firstAddr(iface, true); err != nil {
			return nil, err
		}
		if !ext.PublicIPv6.IsValid() {
			ext.PublicIPv6 = ext.Addr6
		}
	}
	if iface.MTU <= 0 {
		return nil, fmt.Errorf("interface %s reports no MTU", iface.Name)
	}
	return ext, nil
}

// Validate checks the syntax of the options, so that a bad flag is reported
// at start-up before anything is looked up.
func (opts SelectOptions) Validate() error {
	if _, err := parseOptionalAddr("--public-ip", opts.PublicIP, false); err != nil {
		return err
	}
	if _, err := parseOptionalAddr("--public-ipv6", opts.PublicIPv6, true); err != nil {
		return err
	}
	for _, expr := range opts.IfaceRegex {
		if _, err := regexp.Compile(expr); err != nil {
			return fmt.Errorf("--iface-regex %q: %w", expr, err)
		}
	}
	if opts.IfaceCanReach != "" {
		if _, err := netip.ParseAddr(opts.IfaceCanReach); err != nil {
			return fmt.Errorf("--iface-can-reach %q is not an IP address", opts.IfaceCanReach)
		}
	}
	return nil
}

// chooseInterface applies the selection flags in flanneld's order. When the
// interface was named by one of its addresses, that address is returned too.
func chooseInterface(opts SelectOptions, ifaces []Interface, host Host) (Interface, netip.Addr, error) {
	switch {
	case len(opts.Ifaces) > 0:
		for _, want := range opts.Ifaces {
			if a, err := netip.ParseAddr(want); err == nil {
				if iface, ok := interfaceWithAddr(ifaces, a); ok {
					return iface, a, nil
				}
				continue
			}
			if iface, ok := interfaceNamed(ifaces, want); ok {
				return iface, netip.Addr{}, nil
			}
		}
		return Interface{}, netip.Addr{}, fmt.Errorf("--iface: no interface matches any of %s", strings.Join(opts.Ifaces, ", "))

	case len(opts.IfaceRegex) > 0:
		for _, expr := range opts.IfaceRegex {
			re := regexp.MustCompile(expr) // checked by Validate
			for _, iface := range ifaces {
				for _, p := range iface.Addrs {
					if re.MatchString(p.Addr().String()) && familyWanted(opts, p.Addr()) {
						return iface, p.Addr(), nil
					}
				}
			}
			for _, iface := range ifaces {
				if re.MatchString(iface.Name) {
					return iface, netip.Addr{}, nil
				}
			}
		}
		return Interface{}, netip.Addr{}, fmt.Errorf("--iface-regex: no interface address or name matches any of %s", strings.Join(opts.IfaceRegex, ", "))

	case opts.IfaceCanReach != "":
		dst := netip.MustParseAddr(opts.IfaceCanReach) // checked by Validate
		idx, err := host.RouteIndex(dst)
		if err != nil {
			return Interface{}, netip.Addr{}, fmt.Errorf("--iface-can-reach %s: %w", dst, err)
		}
		iface, ok := interfaceIndexed(ifaces, idx)
		if !ok {
			return Interface{}, netip.Addr{}, fmt.Errorf("--iface-can-reach %s: route uses unknown interface index %d", dst, idx)
		}
		return iface, netip.Addr{}, nil

	case opts.PublicIP != "" || opts.PublicIPv6 != "":
		// As flanneld: with no interface flag, the interface that holds
		// --public-ip (else --public-ipv6) carries the traffic.
		flag, s := "--public-ip", opts.PublicIP
		if s == "" {
			flag, s = "--public-ipv6", opts.PublicIPv6
		}
		a := netip.MustParseAddr(s) // checked by Validate
		if iface, ok := interfaceWithAddr(ifaces, a); ok {
			return iface, a, nil
		}
		return Interface{}, netip.Addr{}, fmt.Errorf("%s %s: no interface has this address; without --iface, --iface-regex or --iface-can-reach the interface holding it is used, as in flanneld (add --iface when peers reach this node at an address of another machine, e.g. behind NAT)", flag, a)

	default:
		idx, err := host.DefaultRouteIndex(!opts.IPv4)
		if err != nil {
			return Interface{}, netip.Addr{}, fmt.Errorf("no --iface, --iface-regex or --iface-can-reach given and no default route to pick an interface from: %w", err)
		}
		iface, ok := interfaceIndexed(ifaces, idx)
		if !ok {
			return Interface{}, netip.Addr{}, fmt.Errorf("default route uses unknown interface index %d", idx)
		}
		return iface, netip.Addr{}, nil
	}
}

func familyWanted(opts SelectOptions, a netip.Addr) bool {
	return (a.Is4() && opts.IPv4) || (a.Is6() && opts.IPv6)
}

func interfaceWithAddr(ifaces []Interface, a netip.Addr) (Interface, bool) {
	for _, iface := range ifaces {
		for _, p := range iface.Addrs {
			if p.Addr() == a {
				return iface, true
			}
		}
	}
	return Interface{}, false
}

func interfaceNamed(ifaces []Interface, name string) (Interface, bool) {
	for _, iface := range ifaces {
		if iface.Name == name {
			return iface, true
		}
	}
	return Interface{}, false
}

func interfaceIndexed(ifaces []Interface, idx int) (Interface, bool) {
	for _, iface := range ifaces {
		if iface.Index == idx {
			return iface, true
		}
	}
	return Interface{}, false
}

// firstAddr returns the interface's first global unicast address of the
// family; link-local addresses cannot carry traffic between nodes.
func firstAddr(iface Interface, v6 bool) (netip.Addr, error) {
	for _, p := range iface.Addrs {
		a := p.Addr()
		if a.Is6() == v6 && a.IsGlobalUnicast() {
			return a, nil
		}
	}
	family := "IPv4"
	if v6 {
		family = "IPv6"
	}
	return netip.Addr{}, fmt.Errorf("interface %s has no global %s address", iface.Name, family)
}

func parseOptionalAddr(flag, s string, v6 bool) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Is6() != v6 || a.Zone() != "" {
		want := "an IPv4 address"
		if v6 {
			want = "an IPv6 address"
		}
		return netip.Addr{}, fmt.Errorf("%s %q is not %s", flag, s, want)
	}
	return a, nil
}

// PrefixOf returns the configured prefix of addr on iface: the on-link
// network of the underlay, which decides which peers are directly reachable.
func (iface Interface) PrefixOf(addr netip.Addr) (netip.Prefix, bool) {
	for _, p := range iface.Addrs {
		if p.Addr() == addr {
			return p.Masked(), true
		}
	}
	return netip.Prefix{}, false
}
