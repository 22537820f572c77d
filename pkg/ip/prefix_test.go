package ip

import (
	"math"
	"net/netip"
	"testing"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func TestAddrAdd(t *testing.T) {
	tests := []struct {
		a    string
		n    uint64
		want string // "" means overflow
	}{
		{"10.0.0.0", 1, "10.0.0.1"},
		{"10.0.0.255", 1, "10.0.1.0"},
		{"255.255.255.254", 1, "255.255.255.255"},
		{"255.255.255.255", 1, ""},
		{"0.0.0.0", math.MaxUint32, "255.255.255.255"},
		{"0.0.0.0", math.MaxUint32 + 1, ""},
		{"fd00::", 1, "fd00::1"},
		{"fd00::ffff:ffff:ffff:ffff", 1, "fd00:0:0:1::"},
		{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1, ""},
	}
	for _, tt := range tests {
		got, ok := AddrAdd(addr(tt.a), tt.n)
		if tt.want == "" {
			if ok {
				t.Errorf("AddrAdd(%s, %d) = %s, want overflow", tt.a, tt.n, got)
			}
			continue
		}
		if !ok || got != addr(tt.want) {
			t.Errorf("AddrAdd(%s, %d) = %s, %v; want %s", tt.a, tt.n, got, ok, tt.want)
		}
	}
}

func TestNetworkBroadcastFirstHost(t *testing.T) {
	tests := []struct {
		p                     string
		network, bcast, first string
	}{
		{"10.244.3.7/24", "10.244.3.0", "10.244.3.255", "10.244.3.1"},
		{"10.244.0.0/16", "10.244.0.0", "10.244.255.255", "10.244.0.1"},
		{"10.0.0.5/32", "10.0.0.5", "10.0.0.5", "10.0.0.5"},
		{"10.0.0.4/31", "10.0.0.4", "10.0.0.5", "10.0.0.5"},
		{"0.0.0.0/0", "0.0.0.0", "255.255.255.255", "0.0.0.1"},
		{"fd00:10:244:3::9/64", "fd00:10:244:3::", "fd00:10:244:3:ffff:ffff:ffff:ffff", "fd00:10:244:3::1"},
		{"::/0", "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::1"},
		{"fd00::1/128", "fd00::1", "fd00::1", "fd00::1"},
	}
	for _, tt := range tests {
		p := pfx(tt.p)
		if got := Network(p); got != addr(tt.network) {
			t.Errorf("Network(%s) = %s, want %s", tt.p, got, tt.network)
		}
		if got := Broadcast(p); got != addr(tt.bcast) {
			t.Errorf("Broadcast(%s) = %s, want %s", tt.p, got, tt.bcast)
		}
		if got := FirstHost(p); got != addr(tt.first) {
			t.Errorf("FirstHost(%s) = %s, want %s", tt.p, got, tt.first)
		}
	}
}

func TestNextPrefix(t *testing.T) {
	tests := []struct{ p, want string }{
		{"10.244.0.0/24", "10.244.1.0/24"},
		{"10.244.255.0/24", "10.245.0.0/24"},
		{"255.255.255.0/24", ""},
		{"128.0.0.0/1", ""},
		{"0.0.0.0/1", "128.0.0.0/1"},
		{"0.0.0.0/0", ""},
		{"fd00::/64", "fd00:0:0:1::/64"},
		{"ffff:ffff:ffff:ffff::/64", ""},
		{"10.0.0.255/32", "10.0.1.0/32"},
	}
	for _, tt := range tests {
		got, ok := NextPrefix(pfx(tt.p))
		if tt.want == "" {
			if ok {
				t.Errorf("NextPrefix(%s) = %s, want none", tt.p, got)
			}
			continue
		}
		if !ok || got != pfx(tt.want) {
			t.Errorf("NextPrefix(%s) = %s, %v; want %s", tt.p, got, ok, tt.want)
		}
	}
}

func TestCoversAndOverlaps(t *testing.T) {
	tests := []struct {
		outer, inner    string
		covers, overlap bool
	}{
		{"10.244.0.0/16", "10.244.3.0/24", true, true},
		{"10.244.0.0/16", "10.244.0.0/16", true, true},
		{"10.244.3.0/24", "10.244.0.0/16", false, true},
		{"10.244.0.0/16", "10.245.0.0/24", false, false},
		{"10.244.0.0/16", "fd00::/64", false, false},
		{"fd00::/48", "fd00:0:0:5::/64", true, true},
		{"fd00::/48", "fd01::/64", false, false},
	}
	for _, tt := range tests {
		if got := Covers(pfx(tt.outer), pfx(tt.inner)); got != tt.covers {
			t.Errorf("Covers(%s, %s) = %v, want %v", tt.outer, tt.inner, got, tt.covers)
		}
		if got := pfx(tt.outer).Overlaps(pfx(tt.inner)); got != tt.overlap {
			t.Errorf("Overlaps(%s, %s) = %v, want %v", tt.outer, tt.inner, got, tt.overlap)
		}
	}
}

func TestNthSubnetAndIndex(t *testing.T) {
	tests := []struct {
		network string
		bits    int
		n       uint64
		want    string // "" means error
	}{
		{"10.244.0.0/16", 24, 0, "10.244.0.0/24"},
		{"10.244.0.0/16", 24, 3, "10.244.3.0/24"},
		{"10.244.0.0/16", 24, 255, "10.244.255.0/24"},
		{"10.244.0.0/16", 24, 256, ""},
		{"10.244.0.0/16", 26, 5, "10.244.1.64/26"},
		{"10.244.0.0/16", 15, 0, ""},
		{"10.244.0.0/16", 33, 0, ""},
		{"fd00:10:244::/56", 64, 255, "fd00:10:244:ff::/64"},
		{"fd00::/32", 96, 1 << 40, "fd00:0:0:100::/96"},
		{"::/0", 128, math.MaxUint64, "::ffff:ffff:ffff:ffff/128"},
	}
	for _, tt := range tests {
		got, err := NthSubnet(pfx(tt.network), tt.bits, tt.n)
		if tt.want == "" {
			if err == nil {
				t.Errorf("NthSubnet(%s, %d, %d) = %s, want error", tt.network, tt.bits, tt.n, got)
			}
			continue
		}
		if err != nil || got != pfx(tt.want) {
			t.Errorf("NthSubnet(%s, %d, %d) = %s, %v; want %s", tt.network, tt.bits, tt.n, got, err, tt.want)
			continue
		}
		idx, err := SubnetIndex(pfx(tt.network), got)
		if err != nil || idx != tt.n {
			t.Errorf("SubnetIndex(%s, %s) = %d, %v; want %d", tt.network, got, idx, err, tt.n)
		}
	}
	if _, err := SubnetIndex(pfx("10.244.0.0/16"), pfx("10.245.0.0/24")); err == nil {
		t.Error("SubnetIndex of a subnet outside the network succeeded")
	}
}

func TestSubnetCount(t *testing.T) {
	tests := []struct {
		network string
		bits    int
		want    uint64
	}{
		{"10.244.0.0/16", 24, 256},
		{"10.244.0.0/16", 16, 1},
		{"10.244.0.0/16", 8, 0},
		{"::/0", 64, math.MaxUint64},
		{"fd00::/48", 64, 65536},
	}
	for _, tt := range tests {
		if got := SubnetCount(pfx(tt.network), tt.bits); got != tt.want {
			t.Errorf("SubnetCount(%s, %d) = %d, want %d", tt.network, tt.bits, got, tt.want)
		}
	}
}

func TestParsePrefix(t *testing.T) {
	good := map[string]string{
		"10.244.0.0/16":    "10.244.0.0/16",
		"fd00:10:244::/56": "fd00:10:244::/56",
		"0.0.0.0/0":        "0.0.0.0/0",
	}
	for in, want := range good {
		got, err := ParsePrefix(in)
		if err != nil || got != pfx(want) {
			t.Errorf("ParsePrefix(%q) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "10.244.0.0", "10.244.1.0/16", "10.244.0.0/33", "::ffff:10.0.0.0/104", "fe80::%eth0/64", "10.244.0.0/-1", "nonsense/8"} {
		if got, err := ParsePrefix(in); err == nil {
			t.Errorf("ParsePrefix(%q) = %s, want error", in, got)
		}
	}
}

// FuzzParsePrefix checks that whatever ParsePrefix accepts is canonical and
// survives the arithmetic the lease store does on it.
func FuzzParsePrefix(f *testing.F) {
	for _, s := range []string{"10.244.0.0/16", "10.244.1.0/16", "fd00::/48", "::/0", "0.0.0.0/0", "1.2.3.4/32", "::ffff:1.2.3.4/128", "x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePrefix(s)
		if err != nil {
			return
		}
		if p.Masked() != p {
			t.Fatalf("ParsePrefix(%q) = %s, not canonical", s, p)
		}
		if again, err := ParsePrefix(p.String()); err != nil || again != p {
			t.Fatalf("round trip of %s: %s, %v", p, again, err)
		}
		if !p.Contains(Broadcast(p)) || !p.Contains(FirstHost(p)) {
			t.Fatalf("%s does not contain its own broadcast %s or first host %s", p, Broadcast(p), FirstHost(p))
		}
		if next, ok := NextPrefix(p); ok && (next.Overlaps(p) || next.Bits() != p.Bits()) {
			t.Fatalf("NextPrefix(%s) = %s overlaps or changes length", p, next)
		}
		bits := p.Bits() + 2
		if bits <= p.Addr().BitLen() {
			last := SubnetCount(p, bits) - 1
			sub, err := NthSubnet(p, bits, last)
			if err != nil || !Covers(p, sub) {
				t.Fatalf("last /%d subnet of %s: %s, %v", bits, p, sub, err)
			}
			if idx, err := SubnetIndex(p, sub); err != nil || idx != last {
				t.Fatalf("SubnetIndex(%s, %s) = %d, %v; want %d", p, sub, idx, err, last)
			}
		}
	})
}
