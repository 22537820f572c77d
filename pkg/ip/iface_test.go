package ip

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// tableHost is a Host described by a table.
type tableHost struct {
	ifaces   []Interface
	default4 int
	default6 int
	routes   map[netip.Addr]int
}

func (h tableHost) Interfaces() ([]Interface, error) { return h.ifaces, nil }

func (h tableHost) DefaultRouteIndex(v6 bool) (int, error) {
	idx := h.default4
	if v6 {
		idx = h.default6
	}
	if idx == 0 {
		return 0, errors.New("no default route")
	}
	return idx, nil
}

func (h tableHost) RouteIndex(dst netip.Addr) (int, error) {
	if idx, ok := h.routes[dst]; ok {
		return idx, nil
	}
	return 0, errors.New("network is unreachable")
}

var testHost = tableHost{
	ifaces: []Interface{
		{Name: "lo", Index: 1, MTU: 65536, Up: true, Addrs: []netip.Prefix{pfx("127.0.0.1/8"), pfx("::1/128")}},
		{Name: "eth0", Index: 2, MTU: 1500, Up: true, Addrs: []netip.Prefix{pfx("fe80::1/64"), pfx("198.18.0.11/24"), pfx("2001:db8::11/64")}},
		{Name: "eth1", Index: 3, MTU: 9000, Up: true, Addrs: []netip.Prefix{pfx("198.19.5.11/24"), pfx("198.19.6.11/24")}},
		{Name: "bond0", Index: 4, MTU: 1400, Up: true},
	},
	default4: 2,
	default6: 2,
	routes:   map[netip.Addr]int{addr("198.19.5.1"): 3, addr("198.18.0.1"): 2},
}

func TestSelectExternal(t *testing.T) {
	tests := []struct {
		name       string
		opts       SelectOptions
		iface      string
		addr, pub  string
		addr6      string
		wantErrHas string
	}{
		{name: "default route", opts: SelectOptions{IPv4: true}, iface: "eth0", addr: "198.18.0.11", pub: "198.18.0.11"},
		{name: "iface by name", opts: SelectOptions{IPv4: true, Ifaces: []string{"eth1"}}, iface: "eth1", addr: "198.19.5.11", pub: "198.19.5.11"},
		{name: "iface by address picks that address", opts: SelectOptions{IPv4: true, Ifaces: []string{"198.19.6.11"}}, iface: "eth1", addr: "198.19.6.11", pub: "198.19.6.11"},
		{name: "first matching iface wins", opts: SelectOptions{IPv4: true, Ifaces: []string{"wlan0", "eth1", "eth0"}}, iface: "eth1", addr: "198.19.5.11", pub: "198.19.5.11"},
		{name: "iface not found", opts: SelectOptions{IPv4: true, Ifaces: []string{"wlan0", "10.9.9.9"}}, wantErrHas: "--iface: no interface matches any of wlan0, 10.9.9.9"},
		{name: "regex on address first", opts: SelectOptions{IPv4: true, IfaceRegex: []string{`^198\.19\.6\.`}}, iface: "eth1", addr: "198.19.6.11", pub: "198.19.6.11"},
		{name: "regex on name", opts: SelectOptions{IPv4: true, IfaceRegex: []string{`^eth1$`}}, iface: "eth1", addr: "198.19.5.11", pub: "198.19.5.11"},
		{name: "regex order", opts: SelectOptions{IPv4: true, IfaceRegex: []string{`^nothing`, `eth`}}, iface: "eth0", addr: "198.18.0.11", pub: "198.18.0.11"},
		{name: "bad regex", opts: SelectOptions{IPv4: true, IfaceRegex: []string{`eth(`}}, wantErrHas: `--iface-regex "eth("`},
		{name: "regex no match", opts: SelectOptions{IPv4: true, IfaceRegex: []string{`^wlan`}}, wantErrHas: "--iface-regex: no interface"},
		{name: "can reach", opts: SelectOptions{IPv4: true, IfaceCanReach: "198.19.5.1"}, iface: "eth1", addr: "198.19.5.11", pub: "198.19.5.11"},
		{name: "can reach unreachable", opts: SelectOptions{IPv4: true, IfaceCanReach: "203.0.113.1"}, wantErrHas: "--iface-can-reach 203.0.113.1: network is unreachable"},
		{name: "can reach not an address", opts: SelectOptions{IPv4: true, IfaceCanReach: "gateway"}, wantErrHas: `--iface-can-reach "gateway" is not an IP address`},
		{name: "public ip overrides", opts: SelectOptions{IPv4: true, Ifaces: []string{"eth0"}, PublicIP: "203.0.113.7"}, iface: "eth0", addr: "198.18.0.11", pub: "203.0.113.7"},
		{name: "public ip alone picks the interface holding it", opts: SelectOptions{IPv4: true, PublicIP: "198.19.6.11"}, iface: "eth1", addr: "198.19.6.11", pub: "198.19.6.11"},
		{name: "public ip alone that no interface holds", opts: SelectOptions{IPv4: true, PublicIP: "203.0.113.7"}, wantErrHas: "--public-ip 203.0.113.7: no interface has this address"},
		{name: "bad public ip", opts: SelectOptions{IPv4: true, PublicIP: "203.0.113"}, wantErrHas: `--public-ip "203.0.113" is not an IPv4 address`},
		{name: "public ip of wrong family", opts: SelectOptions{IPv4: true, PublicIP: "2001:db8::1"}, wantErrHas: "--public-ip"},
		{name: "no address on iface", opts: SelectOptions{IPv4: true, Ifaces: []string{"bond0"}}, wantErrHas: "interface bond0 has no global IPv4 address"},
		{name: "dual stack skips link-local", opts: SelectOptions{IPv4: true, IPv6: true}, iface: "eth0", addr: "198.18.0.11", pub: "198.18.0.11", addr6: "2001:db8::11"},
		{name: "ipv6 missing on iface", opts: SelectOptions{IPv4: true, IPv6: true, Ifaces: []string{"eth1"}}, wantErrHas: "interface eth1 has no global IPv6 address"},
		{name: "no family", opts: SelectOptions{}, wantErrHas: "neither IPv4 nor IPv6"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ext, err := SelectExternal(tt.opts, testHost)
			if tt.wantErrHas != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErrHas) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErrHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ext.Iface.Name != tt.iface || ext.Addr != addr(tt.addr) || ext.PublicIP != addr(tt.pub) {
				t.Fatalf("got %s %s public %s, want %s %s public %s", ext.Iface.Name, ext.Addr, ext.PublicIP, tt.iface, tt.addr, tt.pub)
			}
			if tt.addr6 != "" && (ext.Addr6 != addr(tt.addr6) || ext.PublicIPv6 != addr(tt.addr6)) {
				t.Fatalf("IPv6 %s public %s, want %s", ext.Addr6, ext.PublicIPv6, tt.addr6)
			}
		})
	}
}

func TestSelectExternalNoDefaultRoute(t *testing.T) {
	h := testHost
	h.default4 = 0
	_, err := SelectExternal(SelectOptions{IPv4: true}, h)
	if err == nil || !strings.Contains(err.Error(), "no default route") {
		t.Fatalf("err = %v, want a message about the missing default route", err)
	}
}

func TestPrefixOf(t *testing.T) {
	eth1 := testHost.ifaces[2]
	if p, ok := eth1.PrefixOf(addr("198.19.6.11")); !ok || p != pfx("198.19.6.0/24") {
		t.Fatalf("PrefixOf = %s, %v", p, ok)
	}
	if _, ok := eth1.PrefixOf(addr("198.18.0.11")); ok {
		t.Fatal("PrefixOf found an address the interface does not have")
	}
}
