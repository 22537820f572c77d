package netconf

import (
	"encoding/json"
	"net/netip"

	"github.com/overlayd/overlayd/pkg/ip"
)

// family holds the key names of one address family's settings.
type family struct {
	v6                           bool
	network, subnetLen, min, max string
	enableKey                    string
	maxSubnetLen                 int
}

func (f family) parse(get func(string) json.RawMessage) (network netip.Prefix, subnetLen int, min, max netip.Prefix, err error) {
	raw := get(f.network)
	if raw == nil {
		return network, 0, min, max, configErr(f.network, "required while %s is true", f.enableKey)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return network, 0, min, max, configErr(f.network, "want a CIDR string like %q, got %s", f.example(), excerpt(raw))
	}
	network, err = ip.ParsePrefix(s)
	if err != nil {
		return network, 0, min, max, configErr(f.network, "%q is not a valid network: %v", s, err)
	}
	if network.Addr().Is6() != f.v6 {
		other := "IPv6Network"
		if f.v6 {
			other = "Network"
		}
		return network, 0, min, max, configErr(f.network, "%s is of the wrong address family; it belongs in %s", network, other)
	}

	if raw := get(f.subnetLen); raw != nil {
		if err := json.Unmarshal(raw, &subnetLen); err != nil {
			return network, 0, min, max, configErr(f.subnetLen, "want a whole number like %d, got %s", f.defaultLen(network), excerpt(raw))
		}
		switch {
		case subnetLen > f.maxSubnetLen:
			return network, 0, min, max, configErr(f.subnetLen, "/%d leaves no room for pod addresses (at most /%d)", subnetLen, f.maxSubnetLen)
		case subnetLen <= network.Bits():
			return network, 0, min, max, configErr(f.subnetLen, "/%d is not longer than %s's /%d: subnets must be smaller than the network", subnetLen, f.network, network.Bits())
		case subnetLen < network.Bits()+2:
			return network, 0, min, max, configErr(f.subnetLen, "/%d splits %s %s into fewer than four subnets", subnetLen, f.network, network)
		}
	} else {
		subnetLen = f.defaultLen(network)
		if subnetLen > f.maxSubnetLen {
			return network, 0, min, max, configErr(f.network, "%s is too small to split into subnets", network)
		}
	}

	last := ip.SubnetCount(network, subnetLen) - 1
	min, _ = ip.NthSubnet(network, subnetLen, 1)
	max, _ = ip.NthSubnet(network, subnetLen, last)
	if min, err = f.parseBound(get, f.min, network, subnetLen, min); err != nil {
		return
	}
	if max, err = f.parseBound(get, f.max, network, subnetLen, max); err != nil {
		return
	}
	if min.Addr().Compare(max.Addr()) > 0 {
		return network, 0, min, max, configErr(f.min, "%s is after %s %s", min.Addr(), f.max, max.Addr())
	}
	return network, subnetLen, min, max, nil
}

func (f family) parseBound(get func(string) json.RawMessage, key string, network netip.Prefix, subnetLen int, def netip.Prefix) (netip.Prefix, error) {
	raw := get(key)
	if raw == nil {
		return def, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return def, configErr(key, "want an address string like %q, got %s", def.Addr(), excerpt(raw))
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Is6() != f.v6 || a.Zone() != "" {
		kind := "an IPv4"
		if f.v6 {
			kind = "an IPv6"
		}
		return def, configErr(key, "%q is not %s address", s, kind)
	}
	if !network.Contains(a) {
		return def, configErr(key, "%s is outside %s %s", a, f.network, network)
	}
	p := netip.PrefixFrom(a, subnetLen)
	if p.Masked().Addr() != a {
		return def, configErr(key, "%s is not the start of a /%d subnet (did you mean %s?)", a, subnetLen, p.Masked().Addr())
	}
	return p, nil
}

// defaultLen is flannel's default subnet length: /24 (/64 for IPv6) for
// large networks, else two bits longer than the network.
func (f family) defaultLen(network netip.Prefix) int {
	if f.v6 {
		if network.Bits() < 62 {
			return 64
		}
		return network.Bits() + 2
	}
	if network.Bits() < 22 {
		return 24
	}
	return network.Bits() + 2
}

func (f family) example() string {
	if f.v6 {
		return "fd00:10:244::/56"
	}
	return "10.244.0.0/16"
}
