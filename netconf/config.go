// Package netconf is net-conf.json: its keys, flanneld's defaults, the
// validation whose every error names the key at fault, and the rules of what
// may change while the cluster runs. Backends parse their own Backend
// options with DecodeBackend, so those errors read the same.
package netconf

import (
	"encoding/json"
	"net/netip"
	"strings"
)

// LeaseMode says where a node's subnet comes from.
type LeaseMode string

const (
	// LeaseModePodCIDR takes Node.spec.podCIDR(s) as kube-controller-manager
	// assigned it: flannel's --kube-subnet-mgr model.
	LeaseModePodCIDR LeaseMode = "podCIDR"
	// LeaseModeLease lets the agents allocate subnets themselves, one
	// coordination.k8s.io Lease per subnet.
	LeaseModeLease LeaseMode = "lease"
)

// DefaultBackend is the backend used when net-conf.json names none.
const DefaultBackend = "vxlan"

// Config is a parsed and validated net-conf.json, defaults applied.
type Config struct {
	EnableIPv4 bool
	EnableIPv6 bool

	Network   netip.Prefix
	SubnetLen int
	SubnetMin netip.Prefix // first subnet that may be handed out
	SubnetMax netip.Prefix // last subnet that may be handed out

	IPv6Network   netip.Prefix
	IPv6SubnetLen int
	IPv6SubnetMin netip.Prefix
	IPv6SubnetMax netip.Prefix

	LeaseMode LeaseMode

	// EnableNFTables keeps the traffic rules in nftables instead of
	// iptables; it may change while running.
	EnableNFTables bool

	// BackendType is Backend.Type; Backend is the whole Backend object, kept
	// raw for the backend to parse its own keys.
	BackendType string
	Backend     json.RawMessage
}

// knownKeys are the top-level keys overlayd reads. Like flanneld (which
// decodes with encoding/json) it matches them case-insensitively.
var knownKeys = []string{
	"Network", "SubnetLen", "SubnetMin", "SubnetMax",
	"EnableIPv4", "EnableIPv6",
	"IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax",
	"Backend", "LeaseMode",
	"EnableNFTables",
	// flannel keys overlayd accepts only with their default value.
	"Networks", "IPv6Networks",
}

// Parse parses and validates net-conf.json as flanneld reads it. Every
// error names the key and the bad value. The backend's own keys are checked
// by the backend.
func Parse(data []byte) (*Config, error) {
	fields, err := decodeObject("", data)
	if err != nil {
		return nil, err
	}
	keys, err := canonicalKeys("", fields, knownKeys)
	if err != nil {
		return nil, err
	}
	get := func(key string) json.RawMessage { return keys[key] }

	cfg := &Config{EnableIPv4: true, LeaseMode: LeaseModePodCIDR}
	if err := decodeBool("EnableIPv4", get("EnableIPv4"), &cfg.EnableIPv4); err != nil {
		return nil, err
	}
	if err := decodeBool("EnableIPv6", get("EnableIPv6"), &cfg.EnableIPv6); err != nil {
		return nil, err
	}
	if err := decodeBool("EnableNFTables", get("EnableNFTables"), &cfg.EnableNFTables); err != nil {
		return nil, err
	}
	if err := refuseUnsupported(get); err != nil {
		return nil, err
	}
	if !cfg.EnableIPv4 && !cfg.EnableIPv6 {
		return nil, configErr("EnableIPv4", "EnableIPv4 and EnableIPv6 are both false: there is no network to run")
	}

	if cfg.EnableIPv4 {
		fam := family{
			v6: false, network: "Network", subnetLen: "SubnetLen", min: "SubnetMin", max: "SubnetMax",
			maxSubnetLen: 30, enableKey: "EnableIPv4",
		}
		if cfg.Network, cfg.SubnetLen, cfg.SubnetMin, cfg.SubnetMax, err = fam.parse(get); err != nil {
			return nil, err
		}
	} else if err := mustBeAbsent(get, "Network", "SubnetLen", "SubnetMin", "SubnetMax"); err != nil {
		return nil, err
	}
	if cfg.EnableIPv6 {
		fam := family{
			v6: true, network: "IPv6Network", subnetLen: "IPv6SubnetLen", min: "IPv6SubnetMin", max: "IPv6SubnetMax",
			maxSubnetLen: 126, enableKey: "EnableIPv6",
		}
		if cfg.IPv6Network, cfg.IPv6SubnetLen, cfg.IPv6SubnetMin, cfg.IPv6SubnetMax, err = fam.parse(get); err != nil {
			return nil, err
		}
	} else if err := mustBeAbsent(get, "IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax"); err != nil {
		return nil, err
	}

	if raw := get("LeaseMode"); raw != nil {
		var mode string
		if err := json.Unmarshal(raw, &mode); err != nil {
			return nil, configErr("LeaseMode", "want %q or %q, got %s", LeaseModePodCIDR, LeaseModeLease, excerpt(raw))
		}
		switch LeaseMode(mode) {
		case LeaseModePodCIDR, LeaseModeLease:
			cfg.LeaseMode = LeaseMode(mode)
		default:
			return nil, configErr("LeaseMode", "%q is not one of %q, %q", mode, LeaseModePodCIDR, LeaseModeLease)
		}
	}

	if cfg.BackendType, cfg.Backend, err = parseBackend(get("Backend")); err != nil {
		return nil, err
	}
	return cfg, nil
}

// refuseUnsupported refuses flannel keys whose non-default values overlayd
// does not implement, rather than silently running something else.
func refuseUnsupported(get func(string) json.RawMessage) error {
	for _, key := range []string{"Networks", "IPv6Networks"} {
		raw := get(key)
		var list []string
		if raw == nil {
			continue
		}
		if err := json.Unmarshal(raw, &list); err != nil {
			return configErr(key, "want a list of CIDRs, got %s", excerpt(raw))
		}
		if len(list) > 0 {
			single := strings.TrimSuffix(key, "s")
			return configErr(key, "multiple networks are not supported; give one network as %q", single)
		}
	}
	return nil
}

func mustBeAbsent(get func(string) json.RawMessage, keys ...string) error {
	for _, k := range keys {
		if get(k) != nil {
			enable := "EnableIPv4"
			if strings.HasPrefix(k, "IPv6") {
				enable = "EnableIPv6"
			}
			return configErr(k, "given while %s is false; remove it or enable the family", enable)
		}
	}
	return nil
}

// parseBackend returns the backend type (default vxlan) and the raw object.
func parseBackend(raw json.RawMessage) (string, json.RawMessage, error) {
	if raw == nil || string(raw) == "null" {
		return DefaultBackend, json.RawMessage(`{"Type":"` + DefaultBackend + `"}`), nil
	}
	fields, err := decodeObject("Backend", raw)
	if err != nil {
		return "", nil, err
	}
	typ := DefaultBackend
	for k, v := range fields {
		if !strings.EqualFold(k, "Type") {
			continue
		}
		if err := json.Unmarshal(v, &typ); err != nil {
			return "", nil, configErr("Backend.Type", "want a backend name like %q, got %s", DefaultBackend, excerpt(v))
		}
		if typ == "" {
			typ = DefaultBackend
		}
	}
	return typ, raw, nil
}
