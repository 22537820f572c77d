package cluster

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/overlayd/overlayd/netconf"
)

// Subnets are a node's subnets, one a family: its podCIDRs, or its lease
// as its subnet.env has it. A family it has none of is the zero Prefix.
type Subnets struct {
	IPv4, IPv6 netip.Prefix
}

// List returns the subnets there are, IPv4 first: what lab.Node.AddPod
// takes, and the order of spec.podCIDRs the harness assigns.
func (s Subnets) List() []netip.Prefix {
	var out []netip.Prefix
	for _, p := range []netip.Prefix{s.IPv4, s.IPv6} {
		if p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

func (s Subnets) String() string {
	var parts []string
	for _, p := range s.List() {
		parts = append(parts, p.String())
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// missing names the families cfg enables that s has no subnet of, or "".
func (s Subnets) missing(cfg *netconf.Config) string {
	var m []string
	if cfg.EnableIPv4 && !s.IPv4.IsValid() {
		m = append(m, "IPv4")
	}
	if cfg.EnableIPv6 && !s.IPv6.IsValid() {
		m = append(m, "IPv6")
	}
	return strings.Join(m, " and ")
}

// parsePodCIDRs reads a Node's spec.podCIDRs, at most one a family.
func parsePodCIDRs(cidrs []string) (Subnets, error) {
	var s Subnets
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return s, fmt.Errorf("podCIDR %q: %w", c, err)
		}
		slot := &s.IPv4
		if p.Addr().Is6() {
			slot = &s.IPv6
		}
		if slot.IsValid() {
			return s, fmt.Errorf("podCIDRs %q: two of one family", cidrs)
		}
		*slot = p
	}
	return s, nil
}
