package backend

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/overlayd/overlayd/pkg/kernel"
)

// State is the desired state of the whole node: kernel tables, and the
// datapaths that are not kernel tables (a userspace packet mover, a device
// with a peer table of its own), by datapath name.
type State struct {
	kernel.State
	Datapaths map[string]DatapathSpec
	// IngressPorts are the UDP ports this node receives encapsulated
	// traffic on (its tunnels'); the traffic rules let only Senders in.
	IngressPorts []int
	// Senders are the public addresses of every peer. Each peer sends to
	// this node with the backend this node publishes, whatever this node
	// uses to reach it, so a receiving side that checks where traffic comes
	// from accepts all of them. Filled by the loop when a datapath or an
	// ingress port is wanted.
	Senders []netip.Addr
}

// AddIngressPort adds a UDP port this node receives encapsulated traffic
// on, once.
func (s *State) AddIngressPort(port int) {
	if !slices.Contains(s.IngressPorts, port) {
		s.IngressPorts = append(s.IngressPorts, port)
	}
}

// AddDatapath adds spec as (part of) the datapath name.
func (s *State) AddDatapath(name string, spec DatapathSpec) error {
	if s.Datapaths == nil {
		s.Datapaths = map[string]DatapathSpec{}
	}
	have, ok := s.Datapaths[name]
	if !ok {
		s.Datapaths[name] = spec.Clone()
		return nil
	}
	if err := have.Merge(spec); err != nil {
		return fmt.Errorf("datapath %s: %w", name, err)
	}
	return nil
}

// Datapath returns the wanted spec of the datapath name, nil if none.
func (s *State) Datapath(name string) DatapathSpec { return s.Datapaths[name] }

// Clone returns a copy of s that shares nothing mutable with it.
func (s State) Clone() State {
	c := State{
		State: kernel.State{
			Links:  slices.Clone(s.Links),
			Routes: slices.Clone(s.Routes),
			Neighs: slices.Clone(s.Neighs),
			FDB:    slices.Clone(s.FDB),
		},
		IngressPorts: slices.Clone(s.IngressPorts),
		Senders:      slices.Clone(s.Senders),
	}
	if s.Datapaths != nil {
		c.Datapaths = make(map[string]DatapathSpec, len(s.Datapaths))
		for name, spec := range s.Datapaths {
			c.Datapaths[name] = spec.Clone()
		}
	}
	return c
}

// Merge adds o to s: links and datapaths wanted by both must agree.
func (s *State) Merge(o State) error {
	for _, l := range o.Links {
		if err := s.AddLink(l); err != nil {
			return err
		}
	}
	s.Routes = append(s.Routes, o.Routes...)
	s.Neighs = append(s.Neighs, o.Neighs...)
	s.FDB = append(s.FDB, o.FDB...)
	for _, p := range o.IngressPorts {
		s.AddIngressPort(p)
	}
	if len(o.Datapaths) == 0 {
		return nil
	}
	for _, name := range slices.Sorted(maps.Keys(o.Datapaths)) {
		if err := s.AddDatapath(name, o.Datapaths[name]); err != nil {
			return err
		}
	}
	return nil
}
