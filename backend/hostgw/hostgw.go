// Package hostgw is direct routing ("host-gw"): each peer's pod subnet of
// each family is routed via the peer's public address of that family on the
// underlay interface. No
// encapsulation, so every node must share one L2 network; a peer that does
// not is skipped and reported, never given a route that cannot work.
package hostgw

import (
	"encoding/json"
	"net/netip"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/subnet"
)

// Type is the backend's name, as in flannel.
const Type = "host-gw"

func init() { backend.Register(Type, New) }

type hostGW struct{}

// New parses the Backend object of net-conf.json; host-gw has no options.
func New(config json.RawMessage) (backend.Backend, error) {
	if err := netconf.DecodeBackend(config, &struct{}{}); err != nil {
		return nil, err
	}
	return hostGW{}, nil
}

func (hostGW) Type() string { return Type }

// MTU is the underlay's: nothing is added to packets.
func (hostGW) MTU(n backend.Node) int { return n.Underlay.Iface.MTU }

// Data is empty: peers need only the public IP, which every lease carries.
func (hostGW) Data(backend.Node, backend.Family) (json.RawMessage, error) { return nil, nil }

// Local needs nothing: the kernel forwards routed traffic to the pod bridge.
func (hostGW) Local(backend.Node, *backend.State) error { return nil }

// Peer routes each family of the peer via its public address of that
// family, which must be on this node's link.
func (hostGW) Peer(n backend.Node, peer subnet.Lease, st *backend.State) error {
	return backend.EachFamily(n, peer, func(f backend.Family, sub netip.Prefix, pub netip.Addr) error {
		if !backend.OnLink(n, pub) {
			return backend.Skip(backend.SkipNotOnLink, "public IP %s is not on the network of %s, so host-gw cannot route to it; use vxlan (optionally with DirectRouting) across L3 boundaries",
				pub, n.Underlay.Iface.Name)
		}
		st.Routes = append(st.Routes, kernel.Route{Dst: sub, Gw: pub, Dev: n.Underlay.Iface.Name})
		return nil
	})
}
