package lab

import (
	"fmt"
	"net/netip"
	"strings"
)

// podSubnets are the subnets a direct pod is attached with: at most one of
// each family, the zero Prefix for a family it has none of.
type podSubnets struct{ v4, v6 netip.Prefix }

// newPodSubnets checks what AddPod was given: one or two masked prefixes,
// at most one a family, each leaving room for a gateway and a pod.
func newPodSubnets(subnets []netip.Prefix) (podSubnets, error) {
	var s podSubnets
	if len(subnets) == 0 || len(subnets) > 2 {
		return s, fmt.Errorf("%d pod subnets: want one IPv4, one IPv6 or one of each", len(subnets))
	}
	for _, sub := range subnets {
		if !sub.IsValid() || sub != sub.Masked() || sub.Addr().Is4In6() || sub.Addr().Zone() != "" {
			return s, fmt.Errorf("subnet %s: want a masked IPv4 or IPv6 prefix", sub)
		}
		slot, family, maxBits := &s.v4, "IPv4", 30
		if sub.Addr().Is6() {
			slot, family, maxBits = &s.v6, "IPv6", 126
		}
		if sub.Bits() > maxBits {
			return s, fmt.Errorf("subnet %s: want an %s prefix of /%d or larger", sub, family, maxBits)
		}
		if slot.IsValid() {
			return s, fmt.Errorf("two %s subnets %s and %s: want at most one a family", family, *slot, sub)
		}
		*slot = sub
	}
	return s, nil
}

// list is the subnets there are, IPv4 first.
func (s podSubnets) list() []netip.Prefix {
	var out []netip.Prefix
	for _, p := range []netip.Prefix{s.v4, s.v6} {
		if p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

func (s podSubnets) String() string {
	var parts []string
	for _, p := range s.list() {
		parts = append(parts, p.String())
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ",")
}
