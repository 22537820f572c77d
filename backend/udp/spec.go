package udp

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/pkg/udptunnel"
)

// Spec is the udp datapath's part of the desired state: the tunnel's spec
// as pkg/udptunnel takes it. Sources is left to the datapath, which fills
// it from the loop's senders.
type Spec struct{ udptunnel.Spec }

func newSpec(port int) *Spec {
	return &Spec{udptunnel.Spec{Device: DeviceName, Port: port, Peers: map[netip.Prefix]netip.AddrPort{}}}
}

// Clone implements backend.DatapathSpec.
func (s *Spec) Clone() backend.DatapathSpec {
	c := *s
	c.Peers = maps.Clone(s.Peers)
	c.Sources = slices.Clone(s.Sources)
	return &c
}

// Merge implements backend.DatapathSpec: one device and port, peers joined.
func (s *Spec) Merge(o backend.DatapathSpec) error {
	other, ok := o.(*Spec)
	if !ok {
		return fmt.Errorf("cannot merge a %T into the udp datapath", o)
	}
	if s.Device != other.Device || s.Port != other.Port {
		return fmt.Errorf("udp datapath wanted on both %s:%d and %s:%d", s.Device, s.Port, other.Device, other.Port)
	}
	if s.Peers == nil {
		s.Peers = map[netip.Prefix]netip.AddrPort{}
	}
	maps.Copy(s.Peers, other.Peers)
	return nil
}
