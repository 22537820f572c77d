package kube

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/subnet"
)

// DefaultAnnotationPrefix is --kube-annotation-prefix's default. With
// "flannel.alpha.coreos.com" the annotations are the ones flanneld reads and
// writes, so overlayd and flanneld nodes see each other as peers.
const DefaultAnnotationPrefix = "overlayd.io"

// keys are the annotation (and label) names derived from one prefix.
type keys struct {
	prefix        string // normalised: ends in "/" or "-"
	managed       string // "true" on a node whose agent published its lease
	backendType   string
	backendData   string
	backendV6Data string
	publicIP      string
	publicIPv6    string
	// overlayd's own: the tunnels' source when it is not the public IP.
	sourceIP, sourceIPv6 string
	// Set by an administrator on a Node, read by the agent (as flanneld):
	nodePublicIP, nodePublicIPv6           string // stand in for --public-ip(v6)
	publicIPOverwrite, publicIPv6Overwrite string // what peers are told
	subnet                                 string // lease mode: the subnet a Lease object stands for
	leaseFamily                            string // lease mode: label marking overlayd's Leases, "ipv4" or "ipv6"
}

// flanneldPrefix is flanneld's check of a normalised prefix (v0.28's
// pkg/subnet/kube/annotations.go), unanchored at the start as there.
var flanneldPrefix = regexp.MustCompile(`(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$`)

// CheckAnnotationPrefix reports whether prefix (--kube-annotation-prefix) is
// one flanneld accepts and whose annotation names the API server accepts.
func CheckAnnotationPrefix(prefix string) error {
	_, err := normalisePrefix(prefix)
	return err
}

// normalisePrefix normalises prefix the way flanneld does ("example.com"
// becomes "example.com/", "example.com/net" becomes "example.com/net-") so
// that the same flag value yields the same annotation names in both daemons,
// and refuses what flanneld refuses. A few prefixes flanneld accepts make
// annotation names the API server refuses (upper case, "_" or a leading
// "-" in the domain): flanneld fails on its first write with them; overlayd
// refuses them at start, saying why.
func normalisePrefix(prefix string) (string, error) {
	p := prefix
	switch strings.Count(p, "/") {
	case 0:
		p += "/"
	case 1:
	default:
		return "", fmt.Errorf("annotation prefix %q: at most one \"/\" is allowed (as in flanneld)", prefix)
	}
	if !strings.HasSuffix(p, "/") && !strings.HasSuffix(p, "-") {
		p += "-"
	}
	if !flanneldPrefix.MatchString(p) {
		return "", fmt.Errorf("annotation prefix %q: want a domain name, optionally followed by /name, as flanneld does (fqdn/[0-9a-z-_]*, e.g. %q)", prefix, DefaultAnnotationPrefix)
	}
	// The longest name made from it, as an annotation key and a label key.
	longest := p + "kube-subnet-manager"
	if errs := validation.IsQualifiedName(longest); len(errs) > 0 {
		return "", fmt.Errorf("annotation prefix %q: flanneld accepts it, but the API server refuses the annotation names it makes (%s: %s); use a lowercase DNS name", prefix, longest, errs[0])
	}
	return p, nil
}

// newKeys derives the annotation and label names from a prefix.
func newKeys(prefix string) (keys, error) {
	p, err := normalisePrefix(prefix)
	if err != nil {
		return keys{}, err
	}
	return keys{
		prefix:        p,
		managed:       p + "kube-subnet-manager",
		backendType:   p + "backend-type",
		backendData:   p + "backend-data",
		backendV6Data: p + "backend-v6-data",
		publicIP:      p + "public-ip",
		publicIPv6:    p + "public-ipv6",
		sourceIP:      p + "public-ip-source",
		sourceIPv6:    p + "public-ipv6-source",

		nodePublicIP:        p + "node-public-ip",
		nodePublicIPv6:      p + "node-public-ipv6",
		publicIPOverwrite:   p + "public-ip-overwrite",
		publicIPv6Overwrite: p + "public-ipv6-overwrite",
		subnet:              p + "subnet",
		leaseFamily:         p + "subnet-lease",
	}, nil
}

// ours reports whether an annotation belongs to this prefix.
func (k keys) ours(name string) bool { return strings.HasPrefix(name, k.prefix) }

// only returns the annotations under the prefix, nil if none.
func (k keys) only(a map[string]string) map[string]string {
	var out map[string]string
	for name, v := range a {
		if k.ours(name) {
			if out == nil {
				out = map[string]string{}
			}
			out[name] = v
		}
	}
	return out
}

// encode renders attrs as the annotations peers read. Backend data is JSON;
// a backend without data publishes "null", as flanneld's host-gw does.
func (k keys) encode(net *netconf.Config, attrs subnet.LeaseAttrs) map[string]string {
	a := map[string]string{
		k.managed:     "true",
		k.backendType: attrs.BackendType,
	}
	if net.EnableIPv4 {
		a[k.backendData] = rawOrNull(attrs.BackendData)
		a[k.publicIP] = attrs.PublicIP.String()
		if attrs.SourceIP.IsValid() && attrs.SourceIP != attrs.PublicIP {
			a[k.sourceIP] = attrs.SourceIP.String()
		}
	}
	if net.EnableIPv6 {
		a[k.backendV6Data] = rawOrNull(attrs.BackendV6Data)
		a[k.publicIPv6] = attrs.PublicIPv6.String()
		if attrs.SourceIPv6.IsValid() && attrs.SourceIPv6 != attrs.PublicIPv6 {
			a[k.sourceIPv6] = attrs.SourceIPv6.String()
		}
	}
	return a
}

// optional are the annotations encode writes only sometimes: a write of
// encode's result must remove those it left out.
func (k keys) optional() []string { return []string{k.sourceIP, k.sourceIPv6} }

func rawOrNull(r json.RawMessage) string {
	if len(r) == 0 {
		return "null"
	}
	return string(r)
}

// checkAttrs refuses attributes that would publish annotations no peer can
// read: a missing backend type or public address, backend data that is not JSON.
func checkAttrs(net *netconf.Config, attrs subnet.LeaseAttrs) error {
	if attrs.BackendType == "" {
		return fmt.Errorf("lease attributes: BackendType is empty")
	}
	if net.EnableIPv4 {
		if !attrs.PublicIP.Is4() {
			return fmt.Errorf("lease attributes: PublicIP %q is not an IPv4 address", attrs.PublicIP)
		}
		if len(attrs.BackendData) > 0 && !json.Valid(attrs.BackendData) {
			return fmt.Errorf("lease attributes: BackendData is not valid JSON")
		}
	}
	if net.EnableIPv6 {
		if !attrs.PublicIPv6.Is6() || attrs.PublicIPv6.Is4In6() {
			return fmt.Errorf("lease attributes: PublicIPv6 %q is not an IPv6 address", attrs.PublicIPv6)
		}
		if len(attrs.BackendV6Data) > 0 && !json.Valid(attrs.BackendV6Data) {
			return fmt.Errorf("lease attributes: BackendV6Data is not valid JSON")
		}
	}
	return nil
}

// decode reads a peer's attributes from its annotations. The error says which
// annotation is missing or malformed; missing tells the two apart. In a
// dual-stack cluster a family whose public address is not published is left
// out (a node running one family only); only when no enabled family is
// published is the peer missing.
func (k keys) decode(net *netconf.Config, a map[string]string) (attrs subnet.LeaseAttrs, missing bool, err error) {
	if v, ok := a[k.managed]; !ok {
		return attrs, true, fmt.Errorf("annotation %s is missing (no agent has published a lease for this node)", k.managed)
	} else if v != "true" {
		return attrs, false, fmt.Errorf("annotation %s is %q, want \"true\"", k.managed, v)
	}
	// Present but empty is a type too: flanneld's udp nodes publish it.
	var ok bool
	if attrs.BackendType, ok = a[k.backendType]; !ok {
		return attrs, true, fmt.Errorf("annotation %s is missing", k.backendType)
	}
	var firstMissing error
	published := 0
	for _, f := range []struct {
		on             bool
		ipKey, dataKey string
		v6             bool
		ip             *netip.Addr
		data           *json.RawMessage
		srcKey         string
		src            *netip.Addr
	}{
		{net.EnableIPv4, k.publicIP, k.backendData, false, &attrs.PublicIP, &attrs.BackendData, k.sourceIP, &attrs.SourceIP},
		{net.EnableIPv6, k.publicIPv6, k.backendV6Data, true, &attrs.PublicIPv6, &attrs.BackendV6Data, k.sourceIPv6, &attrs.SourceIPv6},
	} {
		if !f.on {
			continue
		}
		ip, missing, err := k.addr(a, f.ipKey, f.v6)
		if missing {
			if firstMissing == nil {
				firstMissing = err
			}
			continue
		}
		if err != nil {
			return attrs, false, err
		}
		if *f.data, err = k.json(a, f.dataKey); err != nil {
			return attrs, false, err
		}
		if _, present := a[f.srcKey]; present {
			if *f.src, _, err = k.addr(a, f.srcKey, f.v6); err != nil {
				return attrs, false, err
			}
		}
		*f.ip = ip
		published++
	}
	if published == 0 {
		return attrs, true, firstMissing
	}
	return attrs, false, nil
}

// nodeAddresses reads the public address annotations an administrator set on
// the own Node. A malformed one is left out and described in bad.
func (k keys) nodeAddresses(a map[string]string) (addrs subnet.NodeAddresses, bad []string) {
	for _, f := range []struct {
		key string
		v6  bool
		dst *netip.Addr
	}{
		{k.nodePublicIP, false, &addrs.NodePublicIP},
		{k.nodePublicIPv6, true, &addrs.NodePublicIPv6},
		{k.publicIPOverwrite, false, &addrs.Overwrite},
		{k.publicIPv6Overwrite, true, &addrs.OverwriteV6},
	} {
		if s, ok := a[f.key]; !ok || s == "" {
			continue
		}
		ip, _, err := k.addr(a, f.key, f.v6)
		if err != nil {
			bad = append(bad, err.Error())
			continue
		}
		*f.dst = ip
	}
	return addrs, bad
}

// decodeRecord decodes a peer's annotations for its record: the attributes,
// or the problem that keeps the peer out of the snapshot.
func (k keys) decodeRecord(net *netconf.Config, a map[string]string) (subnet.LeaseAttrs, *problem) {
	attrs, missing, err := k.decode(net, a)
	switch {
	case err != nil && missing:
		return subnet.LeaseAttrs{}, &problem{reason: reasonMissingAnnotations, detail: err.Error()}
	case err != nil:
		return subnet.LeaseAttrs{}, &problem{reason: reasonMalformedAnnotations, detail: err.Error()}
	}
	return attrs, nil
}

func (k keys) addr(a map[string]string, key string, v6 bool) (netip.Addr, bool, error) {
	s, ok := a[key]
	if !ok || s == "" {
		return netip.Addr{}, true, fmt.Errorf("annotation %s is missing", key)
	}
	ip, err := netip.ParseAddr(s)
	if err != nil || ip.Zone() != "" || ip.Is4() == v6 || ip.Is4In6() {
		family := "IPv4"
		if v6 {
			family = "IPv6"
		}
		return netip.Addr{}, false, fmt.Errorf("annotation %s is %q, not an %s address", key, excerpt(s), family)
	}
	return ip, false, nil
}

// json returns the backend data, nil for absent or "null".
func (k keys) json(a map[string]string, key string) (json.RawMessage, error) {
	s, ok := a[key]
	if !ok || s == "null" {
		return nil, nil
	}
	if !json.Valid([]byte(s)) {
		return nil, fmt.Errorf("annotation %s is not valid JSON: %q", key, excerpt(s))
	}
	return json.RawMessage(s), nil
}

func excerpt(s string) string {
	if len(s) > 60 {
		return s[:57] + "..."
	}
	return s
}
