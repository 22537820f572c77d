package ip

import (
	"net"
	"net/netip"
)

// PrefixFromIPNet converts a net.IPNet to a netip.Prefix, IPv4 in IPv4 form.
func PrefixFromIPNet(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	a = a.Unmap()
	if a.Is4() && bits == 128 {
		ones -= 96
	}
	return netip.PrefixFrom(a, ones), true
}

// IPNet converts a prefix to the net.IPNet netlink expects, keeping the
// address bits (not masked) so it can also describe an interface address.
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
