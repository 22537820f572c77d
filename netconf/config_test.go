package netconf

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseConfigDefaults(t *testing.T) {
	tests := []struct {
		name, json         string
		subnetLen          int
		min, max           string
		v6Len              int
		v6Min, v6Max       string
		backend, leaseMode string
	}{
		{
			name: "flannel default", json: `{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}`,
			subnetLen: 24, min: "10.244.1.0/24", max: "10.244.255.0/24", backend: "vxlan", leaseMode: "podCIDR",
		},
		{
			name: "small network gets length+2", json: `{"Network": "10.10.0.0/24"}`,
			subnetLen: 26, min: "10.10.0.64/26", max: "10.10.0.192/26", backend: "vxlan", leaseMode: "podCIDR",
		},
		{
			name: "/22 gets /24", json: `{"Network": "10.10.0.0/22"}`,
			subnetLen: 24, min: "10.10.1.0/24", max: "10.10.3.0/24", backend: "vxlan", leaseMode: "podCIDR",
		},
		{
			name: "explicit bounds and lease mode", json: `{"Network": "10.244.0.0/16", "SubnetLen": 25, "SubnetMin": "10.244.2.0", "SubnetMax": "10.244.9.128", "LeaseMode": "lease", "Backend": {"Type": "host-gw"}}`,
			subnetLen: 25, min: "10.244.2.0/25", max: "10.244.9.128/25", backend: "host-gw", leaseMode: "lease",
		},
		{
			name: "keys match case-insensitively like flanneld", json: `{"network": "10.244.0.0/16", "backend": {"type": "udp"}}`,
			subnetLen: 24, min: "10.244.1.0/24", max: "10.244.255.0/24", backend: "udp", leaseMode: "podCIDR",
		},
		{
			name: "dual stack", json: `{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56"}`,
			subnetLen: 24, min: "10.244.1.0/24", max: "10.244.255.0/24",
			v6Len: 64, v6Min: "fd00:10:244:1::/64", v6Max: "fd00:10:244:ff::/64", backend: "vxlan", leaseMode: "podCIDR",
		},
		{
			name: "empty backend type means vxlan", json: `{"Network": "10.244.0.0/16", "Backend": {"Type": ""}}`,
			subnetLen: 24, min: "10.244.1.0/24", max: "10.244.255.0/24", backend: "vxlan", leaseMode: "podCIDR",
		},
		{
			name: "flannel keys at their defaults are accepted", json: `{"Network": "10.244.0.0/16", "EnableNFTables": false, "Networks": []}`,
			subnetLen: 24, min: "10.244.1.0/24", max: "10.244.255.0/24", backend: "vxlan", leaseMode: "podCIDR",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tt.json))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.SubnetLen != tt.subnetLen || cfg.SubnetMin.String() != tt.min || cfg.SubnetMax.String() != tt.max {
				t.Errorf("v4: len %d min %s max %s; want %d %s %s", cfg.SubnetLen, cfg.SubnetMin, cfg.SubnetMax, tt.subnetLen, tt.min, tt.max)
			}
			if tt.v6Len != 0 && (cfg.IPv6SubnetLen != tt.v6Len || cfg.IPv6SubnetMin.String() != tt.v6Min || cfg.IPv6SubnetMax.String() != tt.v6Max) {
				t.Errorf("v6: len %d min %s max %s; want %d %s %s", cfg.IPv6SubnetLen, cfg.IPv6SubnetMin, cfg.IPv6SubnetMax, tt.v6Len, tt.v6Min, tt.v6Max)
			}
			if cfg.BackendType != tt.backend || string(cfg.LeaseMode) != tt.leaseMode {
				t.Errorf("backend %q lease mode %q; want %q %q", cfg.BackendType, cfg.LeaseMode, tt.backend, tt.leaseMode)
			}
			if !cfg.EnableIPv4 {
				t.Error("EnableIPv4 defaulted to false")
			}
		})
	}
}

func TestParseConfigIPv6Only(t *testing.T) {
	cfg, err := Parse([]byte(`{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/48", "IPv6SubnetLen": 80}`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.EnableIPv4 || cfg.Network.IsValid() || cfg.IPv6SubnetLen != 80 || cfg.IPv6SubnetMin != netip.MustParsePrefix("fd00:0:0:0:1::/80") {
		t.Fatalf("got %+v", cfg)
	}
}

// TestParseConfigErrors asserts that each bad input is refused with an
// error naming the key at fault and showing the bad value.
func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name, json string
		key        string // the key the error must name
		has        string // and a fragment it must contain
	}{
		{"empty file", ``, "", "empty"},
		{"not an object", `["10.244.0.0/16"]`, "", "want a JSON object"},
		{"syntax error with position", "{\n  \"Network\": \"10.244.0.0/16\",\n}", "", "line 3, column 1"},
		{"trailing garbage", `{"Network": "10.244.0.0/16"} {}`, "", "after the JSON object at line 1"},
		{"unknown key", `{"Network": "10.244.0.0/16", "SubnetLenn": 24}`, "SubnetLenn", "unknown key"},
		{"key twice in different case", `{"Network": "10.244.0.0/16", "network": "10.245.0.0/16"}`, "network", "given twice"},
		{"network missing", `{"SubnetLen": 24}`, "Network", "required"},
		{"network not a string", `{"Network": 10}`, "Network", "got 10"},
		{"network not a CIDR", `{"Network": "10.244.0.0"}`, "Network", `"10.244.0.0"`},
		{"network prefix too long", `{"Network": "10.244.0.0/33"}`, "Network", "10.244.0.0/33"},
		{"network host bits", `{"Network": "10.244.1.0/16"}`, "Network", "host bits"},
		{"network IPv6 in IPv4 key", `{"Network": "fd00::/48"}`, "Network", "IPv6Network"},
		{"network too small to split", `{"Network": "10.0.0.0/30"}`, "Network", "too small"},
		{"subnetlen shorter than network", `{"Network": "10.244.0.0/16", "SubnetLen": 8}`, "SubnetLen", "/8"},
		{"subnetlen equal to network", `{"Network": "10.244.0.0/16", "SubnetLen": 16}`, "SubnetLen", "/16"},
		{"subnetlen fewer than four", `{"Network": "10.244.0.0/16", "SubnetLen": 17}`, "SubnetLen", "fewer than four"},
		{"subnetlen too long", `{"Network": "10.244.0.0/16", "SubnetLen": 31}`, "SubnetLen", "/31"},
		{"subnetlen not a number", `{"Network": "10.244.0.0/16", "SubnetLen": "24"}`, "SubnetLen", `"24"`},
		{"subnetlen fractional", `{"Network": "10.244.0.0/16", "SubnetLen": 24.5}`, "SubnetLen", "24.5"},
		{"subnetmin outside network", `{"Network": "10.244.0.0/16", "SubnetMin": "10.245.0.0"}`, "SubnetMin", "10.245.0.0 is outside"},
		{"subnetmin not aligned", `{"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.5"}`, "SubnetMin", "10.244.1.5 is not the start of a /24"},
		{"subnetmin not an address", `{"Network": "10.244.0.0/16", "SubnetMin": "ten"}`, "SubnetMin", `"ten"`},
		{"subnetmax outside network", `{"Network": "10.244.0.0/16", "SubnetMax": "10.250.0.0"}`, "SubnetMax", "10.250.0.0"},
		{"subnetmax IPv6", `{"Network": "10.244.0.0/16", "SubnetMax": "fd00::"}`, "SubnetMax", "not an IPv4"},
		{"min after max", `{"Network": "10.244.0.0/16", "SubnetMin": "10.244.9.0", "SubnetMax": "10.244.2.0"}`, "SubnetMin", "10.244.9.0 is after SubnetMax 10.244.2.0"},
		{"enableipv4 not bool", `{"Network": "10.244.0.0/16", "EnableIPv4": "yes"}`, "EnableIPv4", `"yes"`},
		{"both families off", `{"EnableIPv4": false}`, "EnableIPv4", "both false"},
		{"ipv6 network missing", `{"Network": "10.244.0.0/16", "EnableIPv6": true}`, "IPv6Network", "required while EnableIPv6"},
		{"ipv6 network is IPv4", `{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "10.245.0.0/16"}`, "IPv6Network", "wrong address family"},
		{"ipv6 subnetlen too long", `{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/48", "IPv6SubnetLen": 127}`, "IPv6SubnetLen", "/127"},
		{"ipv6 subnetmin not aligned", `{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/48", "IPv6SubnetMin": "fd00:0:0:1::5"}`, "IPv6SubnetMin", "fd00:0:0:1::5"},
		{"ipv6 key while ipv6 off", `{"Network": "10.244.0.0/16", "IPv6Network": "fd00::/48"}`, "IPv6Network", "EnableIPv6 is false"},
		{"ipv4 key while ipv4 off", `{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/48", "Network": "10.244.0.0/16"}`, "Network", "EnableIPv4 is false"},
		{"lease mode unknown", `{"Network": "10.244.0.0/16", "LeaseMode": "etcd"}`, "LeaseMode", `"etcd"`},
		{"lease mode not string", `{"Network": "10.244.0.0/16", "LeaseMode": 1}`, "LeaseMode", "got 1"},
		{"backend not an object", `{"Network": "10.244.0.0/16", "Backend": "vxlan"}`, "Backend", `"vxlan"`},
		{"backend type not a string", `{"Network": "10.244.0.0/16", "Backend": {"Type": 4}}`, "Backend.Type", "got 4"},
		{"backend syntax", `{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan",}}`, "", "line 1"},
		{"nftables not a bool", `{"Network": "10.244.0.0/16", "EnableNFTables": "yes"}`, "EnableNFTables", `"yes"`},
		{"multiple networks", `{"Networks": ["10.244.0.0/16", "10.245.0.0/16"]}`, "Networks", "give one network"},
	}
	if len(tests) < 20 {
		t.Fatalf("only %d bad inputs", len(tests))
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tt.json))
			if err == nil {
				t.Fatalf("accepted: %+v", cfg)
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %v is not a *Error", err)
			}
			if ce.Key != tt.key {
				t.Errorf("error names key %q, want %q (%v)", ce.Key, tt.key, err)
			}
			if !strings.Contains(err.Error(), tt.has) {
				t.Errorf("error %q does not contain %q", err, tt.has)
			}
			if tt.key != "" && !strings.Contains(err.Error(), tt.key+":") {
				t.Errorf("error %q does not show the key %q", err, tt.key)
			}
		})
	}
}

func TestCheckKeys(t *testing.T) {
	if err := CheckKeys("Backend", []byte(`{"Type": "vxlan", "vni": 4}`), "Type", "VNI"); err != nil {
		t.Fatal(err)
	}
	err := CheckKeys("Backend", []byte(`{"Type": "vxlan", "VNl": 4}`), "Type", "VNI")
	var ce *Error
	if !errors.As(err, &ce) || ce.Key != "Backend.VNl" {
		t.Fatalf("err = %v, want one naming Backend.VNl", err)
	}
}

// FuzzParseConfig checks that no input crashes the parser and that whatever
// it accepts is internally consistent.
func FuzzParse(f *testing.F) {
	seeds := []string{
		`{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}`,
		`{"Network": "10.10.0.0/24", "SubnetLen": 28, "SubnetMin": "10.10.0.16", "SubnetMax": "10.10.0.224"}`,
		`{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/48"}`,
		`{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56", "LeaseMode": "lease"}`,
		`{"network": "10.0.0.0/8", "backend": {"type": "udp", "Port": 8285}}`,
		`{"Network": "10.244.1.0/16"}`,
		`{`, `null`, `[]`, `{"Network": 1e400}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data)
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %v is not a *Error", err)
			}
			return
		}
		if cfg.EnableIPv4 {
			if cfg.SubnetLen <= cfg.Network.Bits() || cfg.SubnetLen > 30 {
				t.Fatalf("accepted SubnetLen %d for %s", cfg.SubnetLen, cfg.Network)
			}
			for _, p := range []netip.Prefix{cfg.SubnetMin, cfg.SubnetMax} {
				if !cfg.Network.Contains(p.Addr()) || p.Bits() != cfg.SubnetLen || p.Masked() != p {
					t.Fatalf("bound %s does not fit %s /%d", p, cfg.Network, cfg.SubnetLen)
				}
			}
			if cfg.SubnetMin.Addr().Compare(cfg.SubnetMax.Addr()) > 0 {
				t.Fatalf("SubnetMin %s after SubnetMax %s", cfg.SubnetMin, cfg.SubnetMax)
			}
		}
		if cfg.BackendType == "" || len(cfg.Backend) == 0 {
			t.Fatalf("no backend: %+v", cfg)
		}
	})
}
