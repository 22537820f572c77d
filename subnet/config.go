// Package subnet holds what overlayd knows about address space: the cluster
// configuration from net-conf.json, the per-node lease, the Manager interface
// a lease store implements, and the subnet.env file the CNI plugin reads.
package subnet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/overlayd/overlayd/pkg/ip"
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

	// BackendType is Backend.Type; Backend is the whole Backend object, kept
	// raw for the backend to parse its own keys.
	BackendType string
	Backend     json.RawMessage
}

// ConfigError is an invalid net-conf.json: Key names the offending key
// (dotted for nested keys, e.g. "Backend.VNI").
type ConfigError struct {
	Key string
	Msg string
}

func (e *ConfigError) Error() string {
	if e.Key == "" {
		return "net-conf.json: " + e.Msg
	}
	return fmt.Sprintf("net-conf.json: %s: %s", e.Key, e.Msg)
}

func configErr(key, format string, args ...any) error {
	return &ConfigError{Key: key, Msg: fmt.Sprintf(format, args...)}
}

// knownKeys are the top-level keys overlayd reads. Like flanneld (which
// decodes with encoding/json) it matches them case-insensitively.
var knownKeys = []string{
	"Network", "SubnetLen", "SubnetMin", "SubnetMax",
	"EnableIPv4", "EnableIPv6",
	"IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax",
	"Backend", "LeaseMode",
	// flannel keys overlayd accepts only with their default value.
	"EnableNFTables", "Networks", "IPv6Networks",
}

// ParseConfig parses and validates net-conf.json. Every error names the key
// and the bad value. The backend's own keys are checked by the backend.
func ParseConfig(data []byte) (*Config, error) {
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
	var nft bool
	if err := decodeBool("EnableNFTables", get("EnableNFTables"), &nft); err != nil {
		return err
	}
	if nft {
		return configErr("EnableNFTables", "true is not supported: overlayd programs iptables; remove the key or set it to false")
	}
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

// decodeObject decodes a JSON object into its fields, turning syntax errors
// into messages with line and column.
func decodeObject(key string, data []byte) (map[string]json.RawMessage, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, configErr(key, "empty; want a JSON object")
	}
	var fields map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&fields); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syn):
			line, col := position(data, syn.Offset-1) // Offset is just past the bad byte
			return nil, configErr(key, "JSON syntax error at line %d, column %d: %v", line, col, syn)
		case errors.As(err, &typ):
			return nil, configErr(key, "want a JSON object, got %s", excerpt(data))
		default:
			return nil, configErr(key, "not valid JSON: %v", err)
		}
	}
	if fields == nil {
		return nil, configErr(key, "want a JSON object, got null")
	}
	if dec.More() {
		line, col := position(data, dec.InputOffset())
		return nil, configErr(key, "unexpected data after the JSON object at line %d, column %d", line, col)
	}
	return fields, nil
}

// canonicalKeys maps the fields to their canonical key names, refusing
// unknown keys and keys given twice in different case.
func canonicalKeys(parent string, fields map[string]json.RawMessage, known []string) (map[string]json.RawMessage, error) {
	out := make(map[string]json.RawMessage, len(fields))
	seen := make(map[string]string, len(fields))
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	sort.Strings(names) // deterministic errors
	for _, k := range names {
		canon := ""
		for _, want := range known {
			if strings.EqualFold(k, want) {
				canon = want
				break
			}
		}
		full := k
		if parent != "" {
			full = parent + "." + k
		}
		if canon == "" {
			return nil, configErr(full, "unknown key (known keys: %s)", strings.Join(known, ", "))
		}
		if prev, dup := seen[canon]; dup {
			return nil, configErr(full, "given twice, as %q and %q", prev, k)
		}
		seen[canon] = k
		out[canon] = fields[k]
	}
	return out, nil
}

// CheckKeys refuses keys of a JSON object that are not in known: backends use
// it so that a misspelt option is an error, not a silently ignored setting.
func CheckKeys(parent string, raw json.RawMessage, known ...string) error {
	fields, err := decodeObject(parent, raw)
	if err != nil {
		return err
	}
	_, err = canonicalKeys(parent, fields, known)
	return err
}

func decodeBool(key string, raw json.RawMessage, dst *bool) error {
	if raw == nil {
		return nil
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return configErr(key, "want true or false, got %s", excerpt(raw))
	}
	return nil
}

// excerpt shows a bad value in an error message, shortened if long.
func excerpt(data []byte) string {
	s := string(bytes.TrimSpace(data))
	if len(s) > 60 {
		s = s[:57] + "..."
	}
	return s
}

// position converts a byte offset into a 1-based line and column.
func position(data []byte, offset int64) (line, col int) {
	offset = max(0, min(offset, int64(len(data))))
	before := data[:offset]
	line = bytes.Count(before, []byte("\n")) + 1
	col = int(offset) - bytes.LastIndexByte(before, '\n')
	return line, col
}
