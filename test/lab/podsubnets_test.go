package lab

import (
	"net/netip"
	"strings"
	"testing"
)

func TestNewPodSubnets(t *testing.T) {
	v4, v6 := netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")
	for _, c := range []struct {
		in      []netip.Prefix
		want    podSubnets
		wantErr string
	}{
		{in: []netip.Prefix{v4}, want: podSubnets{v4: v4}},
		{in: []netip.Prefix{v6}, want: podSubnets{v6: v6}},
		{in: []netip.Prefix{v6, v4}, want: podSubnets{v4: v4, v6: v6}},
		{in: nil, wantErr: "0 pod subnets"},
		{in: []netip.Prefix{v4, v6, v4}, wantErr: "3 pod subnets"},
		{in: []netip.Prefix{v4, netip.MustParsePrefix("10.244.2.0/24")}, wantErr: "two IPv4 subnets"},
		{in: []netip.Prefix{v6, netip.MustParsePrefix("fd00:10:244:2::/64")}, wantErr: "two IPv6 subnets"},
		{in: []netip.Prefix{netip.MustParsePrefix("10.244.1.7/24")}, wantErr: "want a masked"},
		{in: []netip.Prefix{netip.MustParsePrefix("fd00:10:244:1::7/64")}, wantErr: "want a masked"},
		{in: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/31")}, wantErr: "/30 or larger"},
		{in: []netip.Prefix{netip.MustParsePrefix("fd00:10:244:1::/127")}, wantErr: "/126 or larger"},
		{in: []netip.Prefix{netip.MustParsePrefix("::ffff:10.244.1.0/120")}, wantErr: "want a masked"},
		{in: []netip.Prefix{{}}, wantErr: "want a masked"},
	} {
		got, err := newPodSubnets(c.in)
		switch {
		case c.wantErr == "" && (err != nil || got != c.want):
			t.Errorf("newPodSubnets(%v) = %v, %v; want %v", c.in, got, err, c.want)
		case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
			t.Errorf("newPodSubnets(%v): %v; want an error saying %q", c.in, err, c.wantErr)
		}
	}
	if s := (podSubnets{v4: v4, v6: v6}).String(); s != "10.244.1.0/24,fd00:10:244:1::/64" {
		t.Errorf("String() = %q", s)
	}
}
