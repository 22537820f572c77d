// Package vxlan is the default backend: in-kernel VXLAN, wire-compatible
// with flannel's vxlan backend (same VNI, port, VTEP addressing and backend
// data), so mixed overlayd/flanneld clusters work.
//
// Per node: a device overlay.<VNI> holding the node's VTEP address (the
// network address of its subnet, as /32). Per peer: a route to the peer's
// subnet via the peer's VTEP address (onlink), a permanent neighbour entry
// mapping that address to the peer's VTEP MAC, and a permanent FDB entry
// sending frames for that MAC to the peer's public IP.
package vxlan

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/subnet"
)

// Type is the backend's name.
const Type = "vxlan"

// DefaultPort is the Linux kernel's default VXLAN port, flannel's default.
const DefaultPort = 8472

// overhead is what VXLAN over IPv4 adds to a packet: outer IP 20, UDP 8,
// VXLAN 8, inner Ethernet 14.
const overhead = 50

func init() { backend.Register(Type, New) }

// Options are the backend's net-conf.json keys (flannel's).
type Options struct {
	VNI           int
	Port          int
	GBP           bool
	Learning      bool
	MTU           int
	DirectRouting bool
	// flanneld's Windows-only keys, accepted and ignored as flanneld on
	// Linux ignores them, so a ConfigMap shared with Windows nodes works.
	MacPrefix, Name string
}

// Data is what a node publishes: flannel's {"VNI":1,"VtepMAC":"…"}, plus the
// port, which flanneld ignores. Publishing the port always lets peers tell
// an overlayd node (port given) from a flanneld one (port implied by the
// cluster-wide setting), and lets the port change while nodes run.
type Data struct {
	VNI     int
	VtepMAC string
	Port    int `json:",omitempty"`
}

type vxlanBackend struct{ opts Options }

// New parses the Backend object of net-conf.json.
func New(config json.RawMessage) (backend.Backend, error) {
	opts := Options{VNI: 1, Port: DefaultPort}
	if err := netconf.DecodeBackend(config, &opts, "VNI", "Port", "GBP", "Learning", "MTU", "DirectRouting", "MacPrefix", "Name"); err != nil {
		return nil, err
	}
	switch {
	case opts.VNI < 1 || opts.VNI > 1<<24-1:
		return nil, &netconf.Error{Key: "Backend.VNI", Msg: fmt.Sprintf("%d is not a VXLAN network identifier (1 to 16777215)", opts.VNI)}
	case opts.Port < 1 || opts.Port > 65535:
		return nil, &netconf.Error{Key: "Backend.Port", Msg: fmt.Sprintf("%d is not a UDP port", opts.Port)}
	case opts.MTU != 0 && (opts.MTU-overhead < 576 || opts.MTU > 65535):
		return nil, &netconf.Error{Key: "Backend.MTU", Msg: fmt.Sprintf("%d is not a usable underlay MTU (%d to 65535: pods get MTU - %d; or 0 for the underlay device's MTU)", opts.MTU, 576+overhead, overhead)}
	}
	return &vxlanBackend{opts: opts}, nil
}

func (b *vxlanBackend) Type() string { return Type }

// MTU is the pods' and the device's: the underlay MTU (the MTU key, as in
// flanneld, else the underlay device's) less what VXLAN adds.
func (b *vxlanBackend) MTU(n backend.Node) int {
	underlay := n.Underlay.Iface.MTU
	if b.opts.MTU != 0 {
		underlay = b.opts.MTU // the underlay's MTU, as in flanneld: the device's may be larger than the path's
	}
	return underlay - overhead
}

// DeviceName is the device of a VNI and port: overlay.<VNI> on the default
// port, overlay.<VNI>p<port> otherwise, so that a port change can run both
// side by side.
// A name longer than the kernel's 15 characters (a VNI of 100 or more on a
// four-digit port) is vx<VNI>p<port>, and where even that is too long,
// vxlan-<hash of VNI and port>.
func DeviceName(vni, port int) string {
	name := fmt.Sprintf("overlay.%d", vni)
	if port != DefaultPort {
		name = fmt.Sprintf("overlay.%dp%d", vni, port)
	}
	if len(name) > maxDeviceName {
		name = fmt.Sprintf("vx%dp%d", vni, port)
	}
	if len(name) > maxDeviceName {
		sum := sha256.Sum256([]byte(fmt.Sprintf("%d:%d", vni, port)))
		name = fmt.Sprintf("vxlan-%x", sum[:])[:maxDeviceName]
	}
	return name
}

// maxDeviceName is the kernel's limit (IFNAMSIZ less the terminating NUL).
const maxDeviceName = 15

// VtepMAC is the node's VTEP MAC: derived from the node name and VNI, so it
// survives restarts and device re-creation and peers never need updating.
// It is a locally administered unicast address.
func VtepMAC(node string, vni int) net.HardwareAddr {
	sum := sha256.Sum256([]byte(fmt.Sprintf("overlayd/vxlan/%s/%d", node, vni)))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&0xfc | 0x02
	return mac
}

func (b *vxlanBackend) Data(n backend.Node) (json.RawMessage, error) {
	mac := n.MAC(DeviceName(b.opts.VNI, b.opts.Port), VtepMAC(n.Name, b.opts.VNI))
	return json.Marshal(Data{VNI: b.opts.VNI, VtepMAC: mac.String(), Port: b.opts.Port})
}

// flanneldDevice is the name flanneld gives its vxlan device, whatever its
// port.
func flanneldDevice(vni int) string { return fmt.Sprintf("flannel.%d", vni) }

// TakeOver implements backend.Adopter: flanneld's vxlan device becomes
// overlayd's device of the same VNI and port, renamed in place, keeping
// its MAC, so no peer has to change anything.
func (b *vxlanBackend) TakeOver(l kernel.LinkInfo) (backend.TakeOver, bool) {
	if l.Type != "vxlan" || l.Name != flanneldDevice(l.VNI) {
		return backend.TakeOver{}, false
	}
	port := l.Port
	if port == 0 {
		port = DefaultPort
	}
	return backend.TakeOver{Rename: DeviceName(l.VNI, port)}, true
}

// device is the link this node needs for traffic of a VNI and port.
func (b *vxlanBackend) device(n backend.Node, vni, port int) kernel.Link {
	name := DeviceName(vni, port)
	return kernel.Link{
		Name: name,
		Kind: kernel.KindVXLAN,
		MTU:  b.MTU(n),
		MAC:  n.MAC(name, VtepMAC(n.Name, vni)),
		VXLAN: kernel.VXLAN{
			VNI:      vni,
			Port:     port,
			Local:    n.Underlay.Addr,
			Underlay: n.Underlay.Iface.Name,
			GBP:      b.opts.GBP,
			Learning: b.opts.Learning,
		},
		Addrs: []netip.Prefix{netip.PrefixFrom(backend.VTEPAddr(n.Lease.Subnet), 32)},
	}
}

func (b *vxlanBackend) Local(n backend.Node, st *backend.State) error {
	return st.AddLink(b.device(n, b.opts.VNI, b.opts.Port))
}

func (b *vxlanBackend) Peer(n backend.Node, peer subnet.Lease, st *backend.State) error {
	if b.opts.DirectRouting && backend.OnLink(n, peer.Attrs.PublicIP) {
		st.Routes = append(st.Routes, kernel.Route{Dst: peer.Subnet, Gw: peer.Attrs.PublicIP, Dev: n.Underlay.Iface.Name})
		return nil
	}
	var d Data
	if err := json.Unmarshal(peer.Attrs.BackendData, &d); err != nil {
		return backend.Skip(backend.SkipBadBackendData, "backend-data %q is not vxlan data: %v", peer.Attrs.BackendData, err)
	}
	mac, err := net.ParseMAC(d.VtepMAC)
	if err != nil || len(mac) != 6 {
		return backend.Skip(backend.SkipBadBackendData, "backend-data VtepMAC %q is not a MAC address", d.VtepMAC)
	}
	if d.VNI < 1 || d.VNI > 1<<24-1 {
		return backend.Skip(backend.SkipBadBackendData, "backend-data VNI %d is not a VXLAN network identifier", d.VNI)
	}
	port := d.Port
	if port == 0 {
		// A flanneld peer: its port is the cluster-wide setting, ours when
		// it shares our VNI.
		port = DefaultPort
		if d.VNI == b.opts.VNI {
			port = b.opts.Port
		}
	}
	dev := b.device(n, d.VNI, port)
	if err := st.AddLink(dev); err != nil {
		return err
	}
	vtep := backend.VTEPAddr(peer.Subnet)
	st.Routes = append(st.Routes, kernel.Route{Dst: peer.Subnet, Gw: vtep, Dev: dev.Name, OnLink: true})
	st.Neighs = append(st.Neighs, kernel.Neigh{Dev: dev.Name, IP: vtep, MAC: mac})
	st.FDB = append(st.FDB, kernel.FDBEntry{Dev: dev.Name, MAC: mac, Dst: peer.Attrs.PublicIP})
	return nil
}
