package wireguard

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/overlayd/overlayd/backend"
)

// Secret is a private or preshared key in the desired state. It prints and
// marshals as "(secret)", so a logged or cached spec never shows it.
type Secret struct{ k wgtypes.Key }

func (s Secret) String() string               { return "(secret)" }
func (s Secret) GoString() string             { return "(secret)" }
func (s Secret) MarshalText() ([]byte, error) { return []byte("(secret)"), nil }
func (s Secret) isZero() bool                 { return s.k == wgtypes.Key{} }

// Spec is the wireguard datapath's part of the desired state: its devices
// by name.
type Spec struct {
	Devices map[string]*DeviceSpec
	// Conflicts are peers left out because another peer publishes the same
	// public key (a device holds one peer per key); the datapath logs them.
	Conflicts []string
}

// DeviceSpec is one WireGuard device.
type DeviceSpec struct {
	Name string
	// Userspace: wireguard-go over the TUN device Name; else the kernel's
	// WireGuard device Name.
	Userspace  bool
	Port       int
	KeyFile    string // where PrivateKey is kept, for a warm start
	PrivateKey Secret
	PSK        Secret // zero: none
	Keepalive  time.Duration
	Peers      map[wgtypes.Key]PeerSpec
	// Why the device runs where it runs, for the log.
	Why string
}

// PeerSpec is one peer of a device.
type PeerSpec struct {
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix
}

// Clone implements backend.DatapathSpec.
func (s *Spec) Clone() backend.DatapathSpec {
	c := &Spec{Devices: make(map[string]*DeviceSpec, len(s.Devices)), Conflicts: slices.Clone(s.Conflicts)}
	for name, d := range s.Devices {
		dc := *d
		dc.Peers = make(map[wgtypes.Key]PeerSpec, len(d.Peers))
		for k, p := range d.Peers {
			dc.Peers[k] = PeerSpec{Endpoint: p.Endpoint, AllowedIPs: slices.Clone(p.AllowedIPs)}
		}
		c.Devices[name] = &dc
	}
	return c
}

// Merge implements backend.DatapathSpec: a device wanted twice must agree
// on everything but its peers, which are joined. Of two peers with one key
// the first stays and the other is a conflict: one peer's bad data must not
// stop the node from reaching all others.
func (s *Spec) Merge(o backend.DatapathSpec) error {
	other, ok := o.(*Spec)
	if !ok {
		return fmt.Errorf("cannot merge a %T into the wireguard datapath", o)
	}
	if s.Devices == nil {
		s.Devices = map[string]*DeviceSpec{}
	}
	s.Conflicts = append(s.Conflicts, other.Conflicts...)
	for _, name := range slices.Sorted(maps.Keys(other.Devices)) {
		od := other.Devices[name]
		d := s.Devices[name]
		if d == nil {
			s.Devices[name] = (&Spec{Devices: map[string]*DeviceSpec{name: od}}).Clone().(*Spec).Devices[name]
			continue
		}
		if d.Userspace != od.Userspace || d.Port != od.Port || d.KeyFile != od.KeyFile || d.PrivateKey != od.PrivateKey || d.PSK != od.PSK || d.Keepalive != od.Keepalive {
			return fmt.Errorf("wireguard device %s wanted with two configurations (port %d and %d)", name, d.Port, od.Port)
		}
		for k, p := range od.Peers {
			if have, dup := d.Peers[k]; dup && !samePeer(have, p) {
				s.Conflicts = append(s.Conflicts, fmt.Sprintf("%s: public key %s published by the peers at %s and %s: reaching the first", name, k, have.Endpoint, p.Endpoint))
				continue
			}
			d.Peers[k] = PeerSpec{Endpoint: p.Endpoint, AllowedIPs: slices.Clone(p.AllowedIPs)}
		}
	}
	return nil
}

func samePeer(a, b PeerSpec) bool {
	return a.Endpoint == b.Endpoint && slices.Equal(a.AllowedIPs, b.AllowedIPs)
}
