package rules

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The ingress chain matches peers by an ipset of overlayd's, one per family,
// kept through netlink (no ipset command needed): one rule whatever the
// number of peers, and a peer joining or leaving is one set entry.

func peerSetName(v6 bool) string {
	if v6 {
		return "overlayd-peers-v6"
	}
	return "overlayd-peers-v4"
}

// ensurePeerSet makes the family's set hold exactly senders and returns how
// many entries it changed.
func ensurePeerSet(v6 bool, senders []netip.Addr) (int, error) {
	name := peerSetName(v6)
	family := uint8(unix.NFPROTO_IPV4)
	if v6 {
		family = unix.NFPROTO_IPV6
	}
	res, err := netlink.IpsetList(name)
	if err != nil {
		if !errors.Is(err, unix.ENOENT) {
			return 0, fmt.Errorf("rules: listing ipset %s: %w", name, err)
		}
		if err := netlink.IpsetCreate(name, "hash:ip", netlink.IpsetCreateOptions{Family: family, MaxElements: 1 << 20}); err != nil {
			return 0, fmt.Errorf("rules: creating ipset %s: %w", name, err)
		}
		res = &netlink.IPSetResult{}
	}
	have := make(map[netip.Addr]bool, len(res.Entries))
	for _, e := range res.Entries {
		if a, ok := netip.AddrFromSlice(e.IP); ok {
			have[a.Unmap()] = true
		}
	}
	changes := 0
	want := make(map[netip.Addr]bool, len(senders))
	for _, a := range senders {
		want[a] = true
		if have[a] {
			continue
		}
		if err := netlink.IpsetAdd(name, &netlink.IPSetEntry{IP: net.IP(a.AsSlice()), Replace: true}); err != nil {
			return changes, fmt.Errorf("rules: adding %s to ipset %s: %w", a, name, err)
		}
		changes++
	}
	for a := range have {
		if want[a] {
			continue
		}
		if err := netlink.IpsetDel(name, &netlink.IPSetEntry{IP: net.IP(a.AsSlice())}); err != nil && !errors.Is(err, unix.ENOENT) {
			return changes, fmt.Errorf("rules: removing %s from ipset %s: %w", a, name, err)
		}
		changes++
	}
	return changes, nil
}

// destroyPeerSet removes the family's set, once no rule refers to it.
func destroyPeerSet(v6 bool) error {
	name := peerSetName(v6)
	if err := netlink.IpsetDestroy(name); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("rules: destroying ipset %s: %w", name, err)
	}
	return nil
}

// readDrops adds what the family's drop rule counted since the last read to
// the metric.
func (f *family) readDrops() {
	if !f.ingress {
		return
	}
	if n, err := f.ingressDropped(); err == nil {
		ingressDropped.observe(f.name, n)
	}
}

// ingressDropped reads the packet counter of the ingress chain's drop rule;
// 0 when there is none.
func (f *family) ingressDropped() (uint64, error) {
	lines, err := f.ipt.ListWithCounters("filter", IngressChain)
	if err != nil {
		return 0, err
	}
	for _, l := range lines {
		args, err := splitRule(l)
		if err != nil || !slices.Contains(args, commentNotFromPeers) {
			continue
		}
		// "-A OVERLAYD-INPUT ... -c <packets> <bytes>"
		if i := slices.Index(args, "-c"); i >= 0 && i+1 < len(args) {
			return strconv.ParseUint(args[i+1], 10, 64)
		}
	}
	return 0, nil
}
