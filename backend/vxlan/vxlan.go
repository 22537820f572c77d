// Package vxlan is the default backend: in-kernel VXLAN, wire-compatible
// with flannel's vxlan backend (same VNI, port, VTEP addressing and backend
// data), so mixed overlayd/flanneld clusters work.
//
// Per node and family: a device (overlay.<VNI> for IPv4, overlay-v6.<VNI>
// for IPv6, as flanneld's flannel.<VNI> and flannel-v6.<VNI>) holding the
// node's VTEP address (the network address of its subnet, as /32 or /128).
// Per peer and family: a route to the peer's subnet via the peer's VTEP
// address (onlink), a permanent neighbour entry mapping that address to the
// peer's VTEP MAC, and a permanent FDB entry sending frames for that MAC to
// the peer's public address of the family.
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

// DeviceName is the IPv4 device of a VNI and port: overlay.<VNI> on the
// default port, overlay.<VNI>p<port> otherwise, so that a port change can
// run both side by side. A name longer than the kernel's 15 characters (a
// VNI of 100 or more on a four-digit port) is vx<VNI>p<port>, and where even
// that is too long, vxlan-<hash of VNI and port>.
func DeviceName(vni, port int) string { return deviceName(backend.IPv4, vni, port) }

// DeviceName6 is the IPv6 device of a VNI and port: overlay-v6.<VNI>, the
// same way (vx6-<VNI>p<port>, vxlan6-<hash>).
func DeviceName6(vni, port int) string { return deviceName(backend.IPv6, vni, port) }

func deviceName(f backend.Family, vni, port int) string {
	base, short, hashed := "overlay", "vx", "vxlan-"
	if f.Is6() {
		base, short, hashed = "overlay-v6", "vx6-", "vxlan6-"
	}
	name := fmt.Sprintf("%s.%d", base, vni)
	if port != DefaultPort {
		name = fmt.Sprintf("%s.%dp%d", base, vni, port)
	}
	if len(name) > maxDeviceName {
		name = fmt.Sprintf("%s%dp%d", short, vni, port)
	}
	if len(name) > maxDeviceName {
		sum := sha256.Sum256([]byte(fmt.Sprintf("%s:%d:%d", f, vni, port)))
		name = fmt.Sprintf("%s%x", hashed, sum[:])[:maxDeviceName]
	}
	return name
}

// maxDeviceName is the kernel's limit (IFNAMSIZ less the terminating NUL).
const maxDeviceName = 15

// VtepMAC is the node's VTEP MAC for IPv4: derived from the node name and
// VNI, so it survives restarts and device re-creation and peers never need
// updating. It is a locally administered unicast address.
func VtepMAC(node string, vni int) net.HardwareAddr { return vtepMAC(backend.IPv4, node, vni) }

// VtepMAC6 is the same for the IPv6 device.
func VtepMAC6(node string, vni int) net.HardwareAddr { return vtepMAC(backend.IPv6, node, vni) }

func vtepMAC(f backend.Family, node string, vni int) net.HardwareAddr {
	seed := fmt.Sprintf("overlayd/vxlan/%s/%d", node, vni)
	if f.Is6() {
		seed = fmt.Sprintf("overlayd/vxlan6/%s/%d", node, vni)
	}
	sum := sha256.Sum256([]byte(seed))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&0xfc | 0x02
	return mac
}

// Data is the backend data of family f: this node's VNI and VTEP MAC of
// that family's device.
func (b *vxlanBackend) Data(n backend.Node, f backend.Family) (json.RawMessage, error) {
	name := deviceName(f, b.opts.VNI, b.opts.Port)
	mac := n.MAC(name, vtepMAC(f, n.Name, b.opts.VNI))
	return json.Marshal(Data{VNI: b.opts.VNI, VtepMAC: mac.String(), Port: b.opts.Port})
}

// flanneldDevice is the name flanneld gives its device of a family and
// VNI, whatever its port.
func flanneldDevice(f backend.Family, vni int) string {
	if f.Is6() {
		return fmt.Sprintf("flannel-v6.%d", vni)
	}
	return fmt.Sprintf("flannel.%d", vni)
}

// TakeOver implements backend.Adopter: flanneld's vxlan devices become
// overlayd's devices of the same family, VNI and port, renamed in place,
// keeping their MACs, so no peer has to change anything.
func (b *vxlanBackend) TakeOver(l kernel.LinkInfo) (backend.TakeOver, bool) {
	if l.Type != "vxlan" {
		return backend.TakeOver{}, false
	}
	port := l.Port
	if port == 0 {
		port = DefaultPort
	}
	for _, f := range []backend.Family{backend.IPv4, backend.IPv6} {
		if l.Name == flanneldDevice(f, l.VNI) {
			return backend.TakeOver{Rename: deviceName(f, l.VNI, port)}, true
		}
	}
	return backend.TakeOver{}, false
}

// ipv6Headroom is what an IPv6 outer header adds beyond IPv4's: the kernel
// caps an IPv6 VXLAN device's MTU 70 bytes, not 50, below its underlay's.
// Pods keep MTU − 50 (what flanneld writes to subnet.env): IPv6 pod packets
// larger than the IPv6 device's MTU learn the path MTU (Packet Too Big).
const ipv6Headroom = 20

// device is the link this node needs for traffic of a family, VNI and port.
func (b *vxlanBackend) device(n backend.Node, f backend.Family, vni, port int) kernel.Link {
	name := deviceName(f, vni, port)
	mtu := b.MTU(n)
	if f.Is6() {
		mtu -= ipv6Headroom
	}
	return kernel.Link{
		Name: name,
		Kind: kernel.KindVXLAN,
		MTU:  mtu,
		MAC:  n.MAC(name, vtepMAC(f, n.Name, vni)),
		VXLAN: kernel.VXLAN{
			VNI:      vni,
			Port:     port,
			Local:    f.UnderlayAddr(n),
			Underlay: n.Underlay.Iface.Name,
			GBP:      b.opts.GBP,
			Learning: b.opts.Learning,
		},
		Addrs:                  []netip.Prefix{backend.HostPrefix(backend.VTEPAddr(f.Subnet(n.Lease)))},
		NoRouterAdvertisements: f.Is6(),
	}
}

// Local is a device for each family the node runs, receiving on its port.
func (b *vxlanBackend) Local(n backend.Node, st *backend.State) error {
	st.AddIngressPort(b.opts.Port)
	for _, f := range n.Families() {
		if err := st.AddLink(b.device(n, f, b.opts.VNI, b.opts.Port)); err != nil {
			return err
		}
	}
	return nil
}

// Peer reaches each family of the peer through the device of that family,
// or directly where DirectRouting finds the peer on this node's link.
func (b *vxlanBackend) Peer(n backend.Node, peer subnet.Lease, st *backend.State) error {
	return backend.EachFamily(n, peer, func(f backend.Family, sub netip.Prefix, pub netip.Addr) error {
		if b.opts.DirectRouting && backend.OnLink(n, pub) {
			st.Routes = append(st.Routes, kernel.Route{Dst: sub, Gw: pub, Dev: n.Underlay.Iface.Name})
			return nil
		}
		data := f.Data(peer.Attrs)
		var d Data
		if err := json.Unmarshal(data, &d); err != nil {
			return backend.Skip(backend.SkipBadBackendData, "%s backend data %q is not vxlan data: %v", f, data, err)
		}
		mac, err := net.ParseMAC(d.VtepMAC)
		if err != nil || len(mac) != 6 {
			return backend.Skip(backend.SkipBadBackendData, "%s backend data VtepMAC %q is not a MAC address", f, d.VtepMAC)
		}
		if d.VNI < 1 || d.VNI > 1<<24-1 {
			return backend.Skip(backend.SkipBadBackendData, "%s backend data VNI %d is not a VXLAN network identifier", f, d.VNI)
		}
		port := d.Port
		if port == 0 {
			// A flanneld peer: its port is the cluster-wide setting, ours
			// when it shares our VNI.
			port = DefaultPort
			if d.VNI == b.opts.VNI {
				port = b.opts.Port
			}
		}
		dev := b.device(n, f, d.VNI, port)
		if err := st.AddLink(dev); err != nil {
			return err
		}
		vtep := backend.VTEPAddr(sub)
		st.Routes = append(st.Routes, kernel.Route{Dst: sub, Gw: vtep, Dev: dev.Name, OnLink: true})
		st.Neighs = append(st.Neighs, kernel.Neigh{Dev: dev.Name, IP: vtep, MAC: mac})
		st.FDB = append(st.FDB, kernel.FDBEntry{Dev: dev.Name, MAC: mac, Dst: pub})
		return nil
	})
}
