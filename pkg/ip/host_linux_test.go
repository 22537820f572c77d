package ip_test

import (
	"net/netip"
	"testing"

	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/test/netnstest"
)

// NetlinkHost, in a namespace of the test's own: an IPv6 underlay is
// chosen as flanneld chooses it, without the addresses peers must not be
// told to send to (deprecated ones here; temporary ones are the same flag
// check), and --iface-regex and --iface-can-reach work for IPv6 too.
func TestNetlinkHostIPv6(t *testing.T) {
	name, ns := netnstest.New(t, "ovlI", "host")
	for _, args := range [][]string{
		{"link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"},
		{"link", "set", "eth0", "up"},
		{"link", "set", "eth0-peer", "up"},
		{"addr", "add", "fd00:198:18::11/64", "dev", "eth0", "nodad"},
		// Listed first (the kernel lists the newest first), so only the
		// flag check keeps it out.
		{"addr", "add", "fd00:198:18::5/64", "dev", "eth0", "nodad", "preferred_lft", "0"},
		{"route", "add", "default", "via", "fd00:198:18::1", "dev", "eth0"},
	} {
		netnstest.IP(t, name, args...)
	}
	var ext, byRegex, byReach *ip.External
	err := kernel.InNamespace(ns, func() error {
		var err error
		if ext, err = ip.SelectExternal(ip.SelectOptions{IPv6: true}, ip.NetlinkHost{}); err != nil {
			return err
		}
		if byRegex, err = ip.SelectExternal(ip.SelectOptions{IPv6: true, IfaceRegex: []string{`^fd00:198:18::11$`}}, ip.NetlinkHost{}); err != nil {
			return err
		}
		byReach, err = ip.SelectExternal(ip.SelectOptions{IPv6: true, IfaceCanReach: "fd00:198:18::99"}, ip.NetlinkHost{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	want := netip.MustParseAddr("fd00:198:18::11")
	for what, e := range map[string]*ip.External{"default route": ext, "iface-regex": byRegex, "iface-can-reach": byReach} {
		if e.Iface.Name != "eth0" || e.Addr6 != want || e.PublicIPv6 != want || e.Addr.IsValid() {
			t.Errorf("%s: %s %s public %s (IPv4 %s), want eth0 %s (the deprecated fd00:198:18::5 never)", what, e.Iface.Name, e.Addr6, e.PublicIPv6, e.Addr, want)
		}
	}
}

// An IPv4 address after an interface's first in the same subnet is a
// secondary one (IFA_F_SECONDARY, the bit IPv6 calls IFA_F_TEMPORARY): it
// is as usable as the first, e.g. as --public-ip or node-public-ip.
func TestNetlinkHostIPv4SecondaryAddress(t *testing.T) {
	name, ns := netnstest.New(t, "ovlI", "host4")
	for _, args := range [][]string{
		{"link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"},
		{"link", "set", "eth0", "up"},
		{"addr", "add", "198.18.0.11/24", "dev", "eth0"},
		{"addr", "add", "198.18.0.201/24", "dev", "eth0"},
		{"route", "add", "default", "via", "198.18.0.1", "dev", "eth0"},
	} {
		netnstest.IP(t, name, args...)
	}
	var ext *ip.External
	err := kernel.InNamespace(ns, func() error {
		var err error
		ext, err = ip.SelectExternal(ip.SelectOptions{IPv4: true, PublicIP: "198.18.0.201"}, ip.NetlinkHost{})
		return err
	})
	if err != nil {
		t.Fatalf("--public-ip on a secondary address: %v", err)
	}
	if want := netip.MustParseAddr("198.18.0.201"); ext.Iface.Name != "eth0" || ext.Addr != want || ext.PublicIP != want {
		t.Errorf("got %s %s public %s, want eth0 198.18.0.201", ext.Iface.Name, ext.Addr, ext.PublicIP)
	}
}
