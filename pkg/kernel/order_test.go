package kernel

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Apply's order, as the kernel reports it on one event socket (so in one
// sequence): additions link, FDB, neighbour, route; removals the reverse;
// routes replaced in place.
func TestApplyOrder(t *testing.T) {
	ns, name := underlayNS(t)
	r := newTestReconciler(t, ns)
	events := entryEvents(t, ns, "overlay.1")

	mustApply(t, r, vxlanState())
	assertOrder(t, "additions", events(unix.RTM_NEWLINK), EntryLink, EntryFDB, EntryNeigh, EntryRoute)

	// A route changed by hand is replaced in place, never deleted first.
	metric := fmt.Sprint(spreadMetric(netip.MustParsePrefix("10.244.3.0/24")))
	ipIn(t, name, "route", "replace", "10.244.3.0/24", "dev", "eth0", "proto", "79", "metric", metric)
	events(unix.RTM_NEWLINK)
	if ch := mustApply(t, r, vxlanState()); ch.Updated[EntryRoute] != 1 {
		t.Fatalf("changed route not updated: %+v", ch)
	}
	if got := events(unix.RTM_DELLINK); slices.Contains(got, EntryRoute) {
		t.Fatalf("route deleted to update it: %v", got)
	}

	peersGone := vxlanState()
	peersGone.Routes, peersGone.Neighs, peersGone.FDB = nil, nil, nil
	mustApply(t, r, peersGone)
	assertOrder(t, "removals", events(unix.RTM_DELLINK), EntryRoute, EntryNeigh, EntryFDB)

	// A device that goes takes its neighbour and FDB entries with it; the
	// routes through it are removed before it.
	mustApply(t, r, vxlanState())
	events(unix.RTM_NEWLINK)
	mustApply(t, r, State{})
	assertOrder(t, "device removal", events(unix.RTM_DELLINK), EntryRoute, EntryLink)
}

// entryEvents subscribes to link, neighbour and IPv4 route events in ns.
// The function it returns drains what has arrived and gives, in order, the
// kind of each event about overlayd's entries on the device dev: additions
// (linkType RTM_NEWLINK) or removals (RTM_DELLINK).
func entryEvents(t *testing.T, ns netns.NsHandle, dev string) func(linkType uint16) []string {
	s, err := nl.SubscribeAt(ns, netns.None(), unix.NETLINK_ROUTE, unix.RTNLGRP_LINK, unix.RTNLGRP_NEIGH, unix.RTNLGRP_IPV4_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.SetReceiveTimeout(&unix.Timeval{Usec: 300_000}); err != nil {
		t.Fatal(err)
	}
	index := -1
	return func(linkType uint16) []string {
		added := linkType == unix.RTM_NEWLINK
		var kinds []string
		for {
			msgs, _, err := s.Receive()
			if errors.Is(err, unix.EAGAIN) {
				return kinds // quiet for the timeout: all there
			}
			if err != nil {
				t.Fatalf("receiving events: %v", err)
			}
			for _, m := range msgs {
				switch m.Header.Type {
				case unix.RTM_NEWLINK, unix.RTM_DELLINK:
					hdr := unix.NlMsghdr(m.Header)
					l, err := netlink.LinkDeserialize(&hdr, m.Data)
					if err == nil && l.Attrs().Name == dev {
						index = l.Attrs().Index
						// Once: a new link's later state changes are the kernel's.
						if m.Header.Type == linkType && !slices.Contains(kinds, EntryLink) {
							kinds = append(kinds, EntryLink)
						}
					}
				case unix.RTM_NEWNEIGH, unix.RTM_DELNEIGH:
					// The test's entries are FDB and IPv4 neighbour entries; a
					// deleted neighbour is reported as failed, not permanent.
					n, err := netlink.NeighDeserialize(m.Data)
					if err != nil || n.LinkIndex != index || (m.Header.Type == unix.RTM_NEWNEIGH) != added {
						continue
					}
					switch n.Family {
					case unix.AF_BRIDGE:
						kinds = append(kinds, EntryFDB)
					case unix.AF_INET:
						kinds = append(kinds, EntryNeigh)
					}
				case unix.RTM_NEWROUTE, unix.RTM_DELROUTE:
					if nl.DeserializeRtMsg(m.Data).Protocol == RouteProtocol && (m.Header.Type == unix.RTM_NEWROUTE) == added {
						kinds = append(kinds, EntryRoute)
					}
				}
			}
		}
	}
}

// assertOrder checks that every kind occurs in got and that all events of
// each kind come before the first of the next.
func assertOrder(t *testing.T, what string, got []string, order ...string) {
	t.Helper()
	for i, kind := range order {
		first := slices.Index(got, kind)
		if first < 0 {
			t.Fatalf("%s: no %s event in %v", what, kind, got)
		}
		if i == 0 {
			continue
		}
		prev := order[i-1]
		if slices.Contains(got[first:], prev) {
			t.Fatalf("%s: a %s event after the first %s: %v", what, prev, kind, got)
		}
	}
}
