package kube

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/subnet"
)

func TestNewKeysNormalisesLikeFlanneld(t *testing.T) {
	for _, tc := range []struct{ prefix, backendType, err string }{
		{prefix: "flannel.alpha.coreos.com", backendType: "flannel.alpha.coreos.com/backend-type"},
		{prefix: "overlayd.io", backendType: "overlayd.io/backend-type"},
		{prefix: "example.com/net", backendType: "example.com/net-backend-type"},
		{prefix: "example.com/net-", backendType: "example.com/net-backend-type"},
		{prefix: "example.com/", backendType: "example.com/backend-type"},
		{prefix: "example.com/net_x", backendType: "example.com/net_x-backend-type"},
		{prefix: "a/b/c", err: `at most one "/"`},
		// flanneld refuses these too.
		{prefix: "localhost", err: "as flanneld does"},
		{prefix: "example.com/Net", err: "as flanneld does"},
		{prefix: "example.com/net.x", err: "as flanneld does"},
		// flanneld accepts these, and then fails to write its annotations.
		{prefix: "Example.com", err: "flanneld accepts it, but the API server refuses"},
		{prefix: "-bad.com", err: "flanneld accepts it, but the API server refuses"},
		{prefix: "a_b.example.com", err: "flanneld accepts it, but the API server refuses"},
	} {
		k, err := newKeys(tc.prefix)
		if check := CheckAnnotationPrefix(tc.prefix); (check == nil) != (err == nil) {
			t.Errorf("CheckAnnotationPrefix(%q) = %v, but newKeys says %v", tc.prefix, check, err)
		}
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("newKeys(%q) = %v, want error containing %q", tc.prefix, err, tc.err)
			}
		case err != nil:
			t.Errorf("newKeys(%q): %v", tc.prefix, err)
		case k.backendType != tc.backendType:
			t.Errorf("newKeys(%q).backendType = %q, want %q", tc.prefix, k.backendType, tc.backendType)
		}
	}
}

func TestLeaseNameIsOneToOne(t *testing.T) {
	for in, want := range map[string]string{
		"10.244.3.0/24":      "subnet-10-244-3-0-24",
		"10.244.3.0/25":      "subnet-10-244-3-0-25",
		"fd00:10:244:3::/64": "subnet-fd00-10-244-3---64",
		"::/64":              "subnet----64",
	} {
		if got := leaseName(netip.MustParsePrefix(in)); got != want {
			t.Errorf("leaseName(%s) = %q, want %q", in, got, want)
		}
	}
}

func rec(node string, created int, v4 string) *record {
	r := &record{key: node, name: node, node: node, created: time.Unix(int64(created), 0),
		attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("198.18.0.1"), BackendType: "vxlan"}}
	if v4 != "" {
		r.v4 = netip.MustParsePrefix(v4)
	}
	return r
}

func TestResolveKeepsTheEarliestClaim(t *testing.T) {
	net := &netconf.Config{EnableIPv4: true, Network: netip.MustParsePrefix("10.244.0.0/16")}
	holder := rec("node-b", 100, "10.244.2.0/24")
	sameSecondLaterName := rec("node-c", 100, "10.244.2.0/24")
	earlierName := rec("a-later", 101, "10.244.2.0/25") // inside node-b's subnet
	wide := rec("b-wide", 102, "10.244.0.0/20")         // covers node-b and node-d
	other := rec("node-d", 103, "10.244.4.0/24")        // inside the refused wide claim: unaffected
	outside := rec("node-e", 50, "10.99.0.0/24")
	incomplete := rec("node-f", 50, "")
	incomplete.subnetP = &problem{reason: reasonMissingSubnet}
	badAttrs := rec("node-g", 10, "10.244.7.0/24")
	badAttrs.attrsP = &problem{reason: reasonMalformedAnnotations}
	squatter := rec("node-h", 200, "10.244.7.0/24") // node-g's subnet: bad annotations do not lose a claim

	records := []*record{squatter, other, wide, earlierName, sameSecondLaterName, holder, outside, incomplete, badAttrs}
	res := resolve(net, "self", records)

	var peers []string
	for _, p := range res.leases() {
		peers = append(peers, p.Node+"="+p.Subnet.String())
	}
	if want := []string{"node-b=10.244.2.0/24", "node-d=10.244.4.0/24"}; !slices.Equal(peers, want) {
		t.Errorf("peers %v, want %v", peers, want)
	}
	for key, want := range map[string]struct{ reason, holder string }{
		"node-c":  {reasonOverlap, "node-b"},
		"a-later": {reasonOverlap, "node-b"},
		"b-wide":  {reasonOverlap, "node-b"},
		"node-e":  {reasonOutsideNetwork, ""},
		"node-f":  {reasonMissingSubnet, ""},
		"node-g":  {reasonMalformedAnnotations, ""},
		"node-h":  {reasonOverlap, "node-g"},
	} {
		got, ok := res.skipped[key]
		if !ok || got.problem.reason != want.reason || got.problem.holder != want.holder {
			t.Errorf("%s: skipped %+v (%v), want %s held by %q", key, got.problem, ok, want.reason, want.holder)
		}
	}
	if len(res.skipped) != 7 {
		t.Errorf("%d skipped, want 7", len(res.skipped))
	}

	// The own node claiming a held subnet is told so, and is never a peer.
	res = resolve(net, "node-c", records)
	if res.ownProblem.reason != reasonOverlap || res.ownProblem.holder != "node-b" {
		t.Errorf("own problem %+v, want overlap with node-b", res.ownProblem)
	}
	if _, ok := res.skipped["node-c"]; ok {
		t.Error("the own node is reported as a skipped peer")
	}
}

func TestResolveMergesLeasesPerNode(t *testing.T) {
	net := &netconf.Config{EnableIPv4: true, Network: netip.MustParsePrefix("10.244.0.0/16"),
		EnableIPv6: true, IPv6Network: netip.MustParsePrefix("fd00::/56")}
	v4 := rec("n1", 1, "10.244.1.0/24")
	v4.key, v4.name = "ns/subnet-10-244-1-0-24", "subnet-10-244-1-0-24"
	v6 := rec("n1", 2, "")
	v6.key, v6.name, v6.v6 = "ns/subnet-fd00-0-0-1---64", "subnet-fd00-0-0-1---64", netip.MustParsePrefix("fd00:0:0:1::/64")
	extra := rec("n1", 3, "10.244.9.0/24")
	extra.key, extra.name = "ns/subnet-10-244-9-0-24", "subnet-10-244-9-0-24"
	half := rec("n2", 1, "10.244.2.0/24")
	half.key = "ns/subnet-10-244-2-0-24"

	res := resolve(net, "self", []*record{extra, v6, half, v4})
	// n2 has an IPv4 subnet only (so far): it is a peer over IPv4 still.
	if l := res.leases(); len(l) != 2 || l[0].Subnet.String() != "10.244.1.0/24" || l[0].IPv6Subnet.String() != "fd00:0:0:1::/64" ||
		l[1].Node != "n2" || l[1].Subnet.String() != "10.244.2.0/24" || l[1].IPv6Subnet.IsValid() {
		t.Errorf("peers %+v, want n1 with both subnets and n2 with IPv4", l)
	}
	if s := res.skipped["ns/subnet-10-244-9-0-24"]; s.problem.reason != reasonDuplicate {
		t.Errorf("n1's extra lease: %+v, want duplicate", s.problem)
	}
	if s, skipped := res.skipped["ns/subnet-10-244-2-0-24"]; skipped {
		t.Errorf("n2 without IPv6 skipped: %+v", s.problem)
	}
	// The own node needs every enabled family before it runs.
	own := rec("self", 4, "10.244.3.0/24")
	res = resolve(net, "self", []*record{own})
	if res.ownProblem.reason != reasonMissingSubnet {
		t.Errorf("own node without IPv6: %+v, want missing_subnet", res.ownProblem)
	}
}
