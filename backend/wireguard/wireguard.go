// Package wireguard is the encrypting backend, wire-compatible with
// flanneld's wireguard backend: the same options and defaults, the same
// backend data ({"PublicKey":"…","Port":…} per family), the same key file,
// so flanneld and overlayd wireguard nodes are peers.
//
// Per node: a WireGuard device per family (Mode "separate", flanneld's
// default: overlay-wg for IPv4 on ListenPort, overlay-wg-v6 for IPv6 on
// ListenPortV6) or one for both (Modes "auto", "ipv4", "ipv6"), holding the
// node's VTEP address, with a route for the whole cluster network into it:
// a pod packet to a subnet no peer is configured for is dropped by the
// device, never sent in the clear. Per peer: a device peer (its public key,
// its public address and port, its subnets as allowed IPs) and a route to
// its subnet.
//
// The device is the kernel's where the kernel has WireGuard, else
// wireguard-go over a TUN device (Backend.Datapath chooses; "auto" probes).
// Either is configured through wgctrl by the same code (configure.go): only
// the device's creation differs.
package wireguard

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/pkg/metrics"
	"github.com/overlayd/overlayd/subnet"
)

// Type is the backend's name, as in flanneld.
const Type = "wireguard"

// The devices, as flanneld's flannel-wg and flannel-wg-v6.
const (
	DeviceName   = "overlay-wg"
	DeviceName6  = "overlay-wg-v6"
	DefaultPort  = 51820
	DefaultPort6 = 51821
)

// overhead is flanneld's: what WireGuard over IPv6 adds at most (outer IPv6
// 40, UDP 8, WireGuard 32), for both families.
const overhead = 80

// The Modes, flanneld's.
const (
	ModeSeparate = "separate"
	ModeAuto     = "auto"
	ModeIPv4     = "ipv4"
	ModeIPv6     = "ipv6"
)

// The Datapaths (overlayd's key; flanneld ignores it).
const (
	DatapathAuto      = "auto"
	DatapathKernel    = "kernel"
	DatapathUserspace = "userspace"
)

// SkipNoKey: a wireguard peer publishes no usable public key, so it cannot
// be reached encrypted; it is not reached at all.
var SkipNoKey = metrics.NewSkipReason("no_wireguard_key")

// SkipOwnKey: a wireguard peer publishes this node's own public key (a
// copied key file); a device cannot have itself as a peer.
var SkipOwnKey = metrics.NewSkipReason("own_wireguard_key")

func init() {
	backend.Register(Type, New)
	backend.RegisterDatapath(Type, openDatapath)
}

// Options are the backend's net-conf.json keys: flanneld's, and Datapath.
type Options struct {
	ListenPort   int
	ListenPortV6 int
	// MTU is the underlay's; the devices and pods get MTU - 80.
	MTU int
	// PSK is a preshared key (wg genpsk) every peer shares, as in flanneld.
	PSK string
	// PersistentKeepaliveInterval is in seconds, as in flanneld; 0 is off.
	PersistentKeepaliveInterval int
	Mode                        string
	// Datapath: "auto" (the kernel's WireGuard where it has it, else
	// userspace), "kernel" or "userspace".
	Datapath string
}

// Data is what a node publishes per family: flanneld's wireguardLeaseAttrs.
type Data struct {
	PublicKey string
	Port      uint16
}

type wgBackend struct {
	opts    Options
	psk     wgtypes.Key // zero: none
	keyFile string
}

// New parses the Backend object of net-conf.json.
func New(config json.RawMessage) (backend.Backend, error) {
	opts := Options{ListenPort: DefaultPort, ListenPortV6: DefaultPort6, Mode: ModeSeparate, Datapath: DatapathAuto}
	if err := netconf.DecodeBackend(config, &opts, "ListenPort", "ListenPortV6", "MTU", "PSK", "PersistentKeepaliveInterval", "Mode", "Datapath"); err != nil {
		return nil, err
	}
	b := &wgBackend{opts: opts, keyFile: KeyFile()}
	switch {
	case opts.ListenPort < 1 || opts.ListenPort > 65535:
		return nil, &netconf.Error{Key: "Backend.ListenPort", Msg: fmt.Sprintf("%d is not a UDP port", opts.ListenPort)}
	case opts.ListenPortV6 < 1 || opts.ListenPortV6 > 65535:
		return nil, &netconf.Error{Key: "Backend.ListenPortV6", Msg: fmt.Sprintf("%d is not a UDP port", opts.ListenPortV6)}
	case opts.MTU != 0 && (opts.MTU-overhead < 1280 || opts.MTU > 65535):
		return nil, &netconf.Error{Key: "Backend.MTU", Msg: fmt.Sprintf("%d is not a usable underlay MTU (%d to 65535: pods get MTU - %d; or 0 for the underlay device's MTU)", opts.MTU, 1280+overhead, overhead)}
	case opts.PersistentKeepaliveInterval < 0 || opts.PersistentKeepaliveInterval > 65535:
		return nil, &netconf.Error{Key: "Backend.PersistentKeepaliveInterval", Msg: fmt.Sprintf("%d is not an interval in seconds (0 to 65535; 0 is off)", opts.PersistentKeepaliveInterval)}
	case opts.Mode != ModeSeparate && opts.Mode != ModeAuto && opts.Mode != ModeIPv4 && opts.Mode != ModeIPv6:
		return nil, &netconf.Error{Key: "Backend.Mode", Msg: fmt.Sprintf("%q is not a mode (separate, auto, ipv4 or ipv6)", opts.Mode)}
	case opts.Datapath != DatapathAuto && opts.Datapath != DatapathKernel && opts.Datapath != DatapathUserspace:
		return nil, &netconf.Error{Key: "Backend.Datapath", Msg: fmt.Sprintf("%q is not a datapath (auto, kernel or userspace)", opts.Datapath)}
	}
	if opts.PSK != "" {
		psk, err := wgtypes.ParseKey(opts.PSK)
		if err != nil {
			// The value is a secret: never repeat it.
			return nil, &netconf.Error{Key: "Backend.PSK", Msg: "not a WireGuard key (44 characters of base64, as wg genpsk prints)"}
		}
		b.psk = psk
	}
	return b, nil
}

func (b *wgBackend) Type() string { return Type }

// MTU is flanneld's: the underlay MTU (the MTU key, else the underlay
// device's) less 80.
func (b *wgBackend) MTU(n backend.Node) int {
	underlay := n.Underlay.Iface.MTU
	if b.opts.MTU != 0 {
		underlay = b.opts.MTU
	}
	return underlay - overhead
}

// wgDevice is one WireGuard device of this node and the families it carries.
type wgDevice struct {
	name     string
	port     int
	families []backend.Family
}

// devices are this node's devices: one per family in separate mode, else
// one for all.
func (b *wgBackend) devices(n backend.Node) []wgDevice {
	if b.opts.Mode != ModeSeparate {
		return []wgDevice{{name: DeviceName, port: b.opts.ListenPort, families: n.Families()}}
	}
	var out []wgDevice
	for _, f := range n.Families() {
		if f.Is6() {
			out = append(out, wgDevice{name: DeviceName6, port: b.opts.ListenPortV6, families: []backend.Family{f}})
		} else {
			out = append(out, wgDevice{name: DeviceName, port: b.opts.ListenPort, families: []backend.Family{f}})
		}
	}
	return out
}

// deviceOf is the device that carries family f.
func (b *wgBackend) deviceOf(n backend.Node, f backend.Family) wgDevice {
	for _, d := range b.devices(n) {
		for _, df := range d.families {
			if df == f {
				return d
			}
		}
	}
	return wgDevice{}
}

// Data is flanneld's {"PublicKey":…,"Port":…} for each family the node
// runs. In the single-device modes both families name the one device's port
// (flanneld names ListenPortV6 there, where its device does not listen).
func (b *wgBackend) Data(n backend.Node, f backend.Family) (json.RawMessage, error) {
	d := b.deviceOf(n, f)
	if d.name == "" {
		return nil, nil
	}
	key, err := loadKey(b.keyFile)
	if err != nil {
		return nil, err
	}
	return json.Marshal(Data{PublicKey: key.PublicKey().String(), Port: uint16(d.port)})
}

// Local is each device with the node's VTEP addresses, a route for the
// cluster network of each family it carries, and its datapath listening on
// its port.
func (b *wgBackend) Local(n backend.Node, st *backend.State) error {
	key, err := loadKey(b.keyFile)
	if err != nil {
		return err
	}
	userspace, why := b.datapathChoice()
	kind := kernel.KindWireGuard
	if userspace {
		kind = kernel.KindTUN
	}
	for _, d := range b.devices(n) {
		link := kernel.Link{Name: d.name, Kind: kind, MTU: b.MTU(n)}
		for _, f := range d.families {
			link.Addrs = append(link.Addrs, backend.HostPrefix(backend.VTEPAddr(f.Subnet(n.Lease))))
			link.NoRouterAdvertisements = link.NoRouterAdvertisements || f.Is6()
			network := n.Network
			if f.Is6() {
				network = n.IPv6Network
			}
			st.Routes = append(st.Routes, kernel.Route{Dst: network, Dev: d.name})
		}
		if err := st.AddLink(link); err != nil {
			return err
		}
		st.AddIngressPort(d.port)
		spec := &DeviceSpec{
			Name: d.name, Userspace: userspace, Port: d.port, KeyFile: b.keyFile,
			PrivateKey: Secret{key}, PSK: Secret{b.psk},
			Keepalive: time.Duration(b.opts.PersistentKeepaliveInterval) * time.Second,
			Peers:     map[wgtypes.Key]PeerSpec{},
			Why:       why,
		}
		if err := st.AddDatapath(Type, &Spec{Devices: map[string]*DeviceSpec{d.name: spec}}); err != nil {
			return err
		}
	}
	return nil
}

// peerData parses what the peer publishes for family f.
func peerData(peer subnet.Lease, f backend.Family) (wgtypes.Key, uint16, error) {
	raw := f.Data(peer.Attrs)
	var d Data
	if len(raw) == 0 || string(raw) == "null" {
		return wgtypes.Key{}, 0, backend.Skip(SkipNoKey, "%s backend data is empty: no public key", f)
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		return wgtypes.Key{}, 0, backend.Skip(backend.SkipBadBackendData, "%s backend data %q is not wireguard data: %v", f, raw, err)
	}
	key, err := wgtypes.ParseKey(d.PublicKey)
	if err != nil || key == (wgtypes.Key{}) {
		return wgtypes.Key{}, 0, backend.Skip(SkipNoKey, "%s backend data PublicKey %q is not a WireGuard public key", f, d.PublicKey)
	}
	return key, d.Port, nil
}

// Peer configures the peer on the device of each family (separate mode), or
// on the one device with all its subnets, and routes its subnets into it.
func (b *wgBackend) Peer(n backend.Node, peer subnet.Lease, st *backend.State) error {
	if b.opts.Mode == ModeSeparate {
		return backend.EachFamily(n, peer, func(f backend.Family, sub netip.Prefix, pub netip.Addr) error {
			key, port, err := peerData(peer, f)
			if err != nil {
				return err
			}
			d := b.deviceOf(n, f)
			if port == 0 { // flanneld: a peer without a port listens on ours
				port = uint16(d.port)
			}
			return b.addPeer(n, st, d.name, key, netip.AddrPortFrom(pub, port), []netip.Prefix{sub})
		})
	}
	// One device: the peer's subnets of every family both run, one endpoint.
	var subs []netip.Prefix
	var data backend.Family
	found := false
	for _, f := range n.Families() {
		if f.Subnet(peer).IsValid() {
			subs = append(subs, f.Subnet(peer))
			data, found = f, true // the last family's data, as flanneld
		}
	}
	if !found {
		return backend.Skip(backend.SkipMissingFamily, "the peer publishes no subnet of a family this node runs")
	}
	key, _, err := peerData(peer, data)
	if err != nil {
		return err
	}
	endpointFamily := backend.IPv4
	switch b.opts.Mode {
	case ModeIPv6:
		endpointFamily = backend.IPv6
	case ModeAuto:
		endpointFamily = autoFamily(n, peer)
	}
	pub := endpointFamily.PublicIP(peer.Attrs)
	if !pub.IsValid() {
		return backend.Skip(backend.SkipMissingFamily, "the peer publishes no %s public address (Mode %s)", endpointFamily, b.opts.Mode)
	}
	_, port, err := peerData(peer, endpointFamily)
	if err != nil || port == 0 {
		port = uint16(b.opts.ListenPort)
	}
	return b.addPeer(n, st, DeviceName, key, netip.AddrPortFrom(pub, port), subs)
}

// autoFamily is flanneld's choice in Mode auto: IPv6 only where the peer's
// IPv4 address is private and both have public IPv6 addresses.
func autoFamily(n backend.Node, peer subnet.Lease) backend.Family {
	v4, v6 := peer.Attrs.PublicIP, peer.Attrs.PublicIPv6
	switch {
	case !v6.IsValid():
		return backend.IPv4
	case v4.IsValid() && !v4.IsPrivate() && n.Underlay.Addr.IsValid():
		return backend.IPv4
	case !v6.IsPrivate() && n.Underlay.Addr6.IsValid() && !n.Underlay.Addr6.IsPrivate():
		return backend.IPv6
	}
	return backend.IPv4
}

func (b *wgBackend) addPeer(n backend.Node, st *backend.State, dev string, key wgtypes.Key, endpoint netip.AddrPort, subs []netip.Prefix) error {
	own, err := loadKey(b.keyFile)
	if err != nil {
		return err
	}
	if key == own.PublicKey() {
		return backend.Skip(SkipOwnKey, "the peer publishes this node's own public key %s", key)
	}
	if err := b.Local(n, st); err != nil { // sending needs the device too
		return err
	}
	for _, sub := range subs {
		st.Routes = append(st.Routes, kernel.Route{Dst: sub, Dev: dev})
	}
	st.Datapath(Type).(*Spec).Devices[dev].Peers[key] = PeerSpec{Endpoint: endpoint, AllowedIPs: subs}
	return nil
}
