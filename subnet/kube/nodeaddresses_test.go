package kube

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/overlayd/overlayd/subnet"
	"github.com/overlayd/overlayd/test/controlplane"
)

// The own Node's public address annotations, as flanneld reads them
// (node-public-ip, public-ip-overwrite and their IPv6 forms), in both lease
// modes, followed while running; a malformed one is ignored, saying so.
func TestNodeAddressesFromTheOwnNode(t *testing.T) {
	c := startCluster(t, controlplane.Options{})
	const prefix = "flannel.alpha.coreos.com"
	for _, mode := range []string{"podCIDR", "lease"} {
		t.Run(mode, func(t *testing.T) {
			self := "addr-" + strings.ToLower(mode)
			createNode(t, c.admin, self, []string{map[string]string{"podCIDR": "10.244.1.0/24", "lease": "10.244.2.0/24"}[mode]}, map[string]string{
				prefix + "/node-public-ip":      "198.18.0.51",
				prefix + "/public-ip-overwrite": "203.0.113.51",
			})
			net := mustNet(t, `{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56", "LeaseMode": "`+mode+`"}`)
			a := startAgent(t, Config{Client: c.admin, NodeName: self, Net: net, AnnotationPrefix: prefix, LeaseNamespace: "default"})
			want := subnet.NodeAddresses{NodePublicIP: netip.MustParseAddr("198.18.0.51"), Overwrite: netip.MustParseAddr("203.0.113.51")}
			waitFor(t, "the annotations at start", func() (bool, string) {
				got, synced := a.NodeAddresses()
				return synced && got == want, formatAddrs(got)
			})

			drain(a.Changed())
			patchAnnotations(t, c, self, map[string]string{
				prefix + "/public-ip-overwrite":   "203.0.113.52",
				prefix + "/node-public-ipv6":      "fd00:198:18::51",
				prefix + "/public-ipv6-overwrite": "fd00:203:113::51",
			})
			want = subnet.NodeAddresses{NodePublicIP: netip.MustParseAddr("198.18.0.51"), Overwrite: netip.MustParseAddr("203.0.113.52"),
				NodePublicIPv6: netip.MustParseAddr("fd00:198:18::51"), OverwriteV6: netip.MustParseAddr("fd00:203:113::51")}
			waitFor(t, "the changed annotations", func() (bool, string) {
				got, _ := a.NodeAddresses()
				return got == want, formatAddrs(got)
			})
			select {
			case <-a.Changed():
			default:
				t.Error("no Changed notification for changed address annotations")
			}

			// A malformed one is left out; the others stay.
			patchAnnotations(t, c, self, map[string]string{prefix + "/node-public-ip": "198.18.0.999", prefix + "/public-ipv6-overwrite": ""})
			want.NodePublicIP, want.OverwriteV6 = netip.Addr{}, netip.Addr{}
			waitFor(t, "the malformed annotation ignored", func() (bool, string) {
				got, _ := a.NodeAddresses()
				return got == want, formatAddrs(got)
			})
			waitFor(t, "a warning naming it", func() (bool, string) {
				l := a.logs.FilterMessageSnippet("ignoring malformed public address annotations").All()
				return len(l) == 1 && strings.Contains(l[0].ContextMap()["detail"].(string), prefix+`/node-public-ip is "198.18.0.999", not an IPv4 address`), ""
			})
		})
	}
}

func formatAddrs(a subnet.NodeAddresses) string {
	return strings.Join([]string{a.NodePublicIP.String(), a.Overwrite.String(), a.NodePublicIPv6.String(), a.OverwriteV6.String()}, " ")
}
