// Package udp is the userspace tunnel backend, wire-compatible with
// flannel's udp backend: each IP packet travels as the payload of one UDP
// datagram to the peer's public IP. The kernel side is a persistent TUN
// device with a route per peer subnet; the packets are moved in batches, with
// offloads, by pkg/udptunnel.
package udp

import (
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/pkg/udptunnel"
	"github.com/overlayd/overlayd/subnet"
)

// Type is the backend's name, as in flannel.
const Type = "udp"

// DeviceName is the TUN device.
const DeviceName = "overlay0"

// overhead is what the tunnel adds: outer IPv4 20, UDP 8.
const overhead = 28

func init() {
	backend.Register(Type, New)
	// flanneld's udp nodes publish no backend type and null data.
	backend.RegisterPublished("", Type)
	backend.RegisterDatapath(Type, openDatapath)
}

// Options are the backend's net-conf.json keys.
type Options struct {
	Port int
	MTU  int
}

// Data is what a node publishes: its port, so it can change while nodes
// run (flanneld publishes nothing: a missing port means the default).
type Data struct {
	Port int `json:",omitempty"`
}

type udpBackend struct{ opts Options }

// New parses the Backend object of net-conf.json.
func New(config json.RawMessage) (backend.Backend, error) {
	opts := Options{Port: udptunnel.DefaultPort}
	if err := netconf.DecodeBackend(config, &opts, "Port", "MTU"); err != nil {
		return nil, err
	}
	switch {
	case opts.Port < 1 || opts.Port > 65535:
		return nil, &netconf.Error{Key: "Backend.Port", Msg: fmt.Sprintf("%d is not a UDP port", opts.Port)}
	case opts.MTU != 0 && (opts.MTU-overhead < 576 || opts.MTU > 65535):
		return nil, &netconf.Error{Key: "Backend.MTU", Msg: fmt.Sprintf("%d is not a usable underlay MTU (%d to 65535: pods get MTU - %d; or 0 for the underlay device's MTU)", opts.MTU, 576+overhead, overhead)}
	}
	return &udpBackend{opts: opts}, nil
}

func (b *udpBackend) Type() string { return Type }

func (b *udpBackend) MTU(n backend.Node) int {
	underlay := n.Underlay.Iface.MTU
	if b.opts.MTU != 0 {
		underlay = b.opts.MTU // the underlay's MTU, as in flanneld: the device's may be larger than the path's
	}
	return underlay - overhead
}

// Data is published for IPv4 only: udp carries IPv4 (CheckConfig).
func (b *udpBackend) Data(_ backend.Node, f backend.Family) (json.RawMessage, error) {
	if f.Is6() {
		return nil, nil
	}
	return json.Marshal(Data{Port: b.opts.Port})
}

// CheckConfig implements backend.ConfigChecker: like flanneld's, the udp
// backend carries IPv4 only.
func (b *udpBackend) CheckConfig(cfg *netconf.Config) error {
	if cfg.EnableIPv6 {
		return &netconf.Error{Key: "EnableIPv6", Msg: "the udp backend carries IPv4 only, as flanneld's does: set EnableIPv6 to false, or use vxlan or host-gw for IPv6"}
	}
	return nil
}

// flanneldDevice is flanneld's udp TUN device.
const flanneldDevice = "flannel0"

// TakeOver implements backend.Adopter: flanneld's TUN (it has no virtio-net
// header, so the datapath cannot use it) is removed once overlay0 carries
// the traffic. A flanneld that stopped normally took it with it.
func (b *udpBackend) TakeOver(l kernel.LinkInfo) (backend.TakeOver, bool) {
	if l.Type != "tuntap" || l.Name != flanneldDevice {
		return backend.TakeOver{}, false
	}
	return backend.TakeOver{Remove: true}, true
}

// Local is the TUN device with the node's VTEP address and the datapath
// listening on the port.
func (b *udpBackend) Local(n backend.Node, st *backend.State) error {
	if err := st.AddLink(kernel.Link{
		Name:  DeviceName,
		Kind:  kernel.KindTUN,
		MTU:   b.MTU(n),
		Addrs: []netip.Prefix{netip.PrefixFrom(backend.VTEPAddr(n.Lease.Subnet), 32)},
	}); err != nil {
		return err
	}
	st.AddIngressPort(b.opts.Port)
	return st.AddDatapath(Type, newSpec(b.opts.Port))
}

// Peer routes the peer's subnet into the TUN and tells the datapath where
// to send it.
func (b *udpBackend) Peer(n backend.Node, peer subnet.Lease, st *backend.State) error {
	if !peer.Subnet.IsValid() || !peer.Attrs.PublicIP.IsValid() {
		return backend.Skip(backend.SkipMissingFamily, "the peer publishes no IPv4 subnet or public address")
	}
	// A flanneld peer publishes no data: its port is the cluster-wide
	// setting, ours.
	port := b.opts.Port
	if len(peer.Attrs.BackendData) > 0 && string(peer.Attrs.BackendData) != "null" {
		var d Data
		if err := json.Unmarshal(peer.Attrs.BackendData, &d); err != nil {
			return backend.Skip(backend.SkipBadBackendData, "backend-data %q is not udp data: %v", peer.Attrs.BackendData, err)
		}
		if d.Port != 0 {
			port = d.Port
		}
	}
	if port < 1 || port > 65535 {
		return backend.Skip(backend.SkipBadBackendData, "backend-data Port %d is not a UDP port", port)
	}
	if err := b.Local(n, st); err != nil { // sending needs the TUN and datapath too
		return err
	}
	st.Routes = append(st.Routes, kernel.Route{Dst: peer.Subnet, Dev: DeviceName})
	st.Datapath(Type).(*Spec).Peers[peer.Subnet] = netip.AddrPortFrom(peer.Attrs.PublicIP, uint16(port))
	return nil
}
