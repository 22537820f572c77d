package netconf

import (
	"errors"
	"strings"
	"testing"
)

// TestCheckLiveChange: the backend may change while the cluster runs; every
// key that decides pods' addresses or the lease may not, and the error names
// the key.
func TestCheckLiveChange(t *testing.T) {
	base := `"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56"`
	running := mustParse(t, `{`+base+`, "Backend": {"Type": "vxlan"}}`)
	if err := CheckLiveChange(running, mustParse(t, `{`+base+`, "Backend": {"Type": "udp", "Port": 8286}}`)); err != nil {
		t.Fatalf("backend change refused: %v", err)
	}
	refused := map[string]string{
		"Network":       `{"Network": "10.245.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56"}`,
		"SubnetLen":     `{` + base + `, "SubnetLen": 25}`,
		"SubnetMin":     `{` + base + `, "SubnetMin": "10.244.2.0"}`,
		"SubnetMax":     `{` + base + `, "SubnetMax": "10.244.200.0"}`,
		"EnableIPv6":    `{"Network": "10.244.0.0/16"}`,
		"IPv6Network":   `{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:245::/56"}`,
		"IPv6SubnetLen": `{` + base + `, "IPv6SubnetLen": 72}`,
		"IPv6SubnetMin": `{` + base + `, "IPv6SubnetMin": "fd00:10:244:2::"}`,
		"IPv6SubnetMax": `{` + base + `, "IPv6SubnetMax": "fd00:10:244:20::"}`,
		"LeaseMode":     `{` + base + `, "LeaseMode": "lease"}`,
	}
	for key, next := range refused {
		err := CheckLiveChange(running, mustParse(t, next))
		var e *Error
		if !errors.As(err, &e) || e.Key != key || !strings.Contains(err.Error(), "changed from") {
			t.Errorf("%s changed: got %v, want an error naming %s", key, err, key)
		}
	}
	v6only := mustParse(t, `{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/48"}`)
	var e *Error
	if err := CheckLiveChange(v6only, mustParse(t, `{"Network": "10.244.0.0/16"}`)); !errors.As(err, &e) || e.Key != "Network" && e.Key != "EnableIPv4" {
		t.Errorf("IPv6-only to IPv4: got %v", err)
	}
}

func mustParse(t *testing.T, s string) *Config {
	t.Helper()
	cfg, err := Parse([]byte(s))
	if err != nil {
		t.Fatalf("%s: %v", s, err)
	}
	return cfg
}
