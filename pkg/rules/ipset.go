package rules

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/pkg/nlbatch"
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
	want := make(map[netip.Addr]bool, len(senders))
	var add, remove []netip.Addr
	for _, a := range senders {
		want[a] = true
		if !have[a] {
			add = append(add, a)
		}
	}
	for a := range have {
		if !want[a] {
			remove = append(remove, a)
		}
	}
	return changePeerSet(v6, add, remove)
}

// addToPeerSet adds the addresses to the set: many to a netlink write
// (pkg/nlbatch) when there are enough of them, as at a start with
// thousands of peers. It returns how many it added.
func addToPeerSet(name string, addrs []netip.Addr) (int, error) {
	if len(addrs) == 0 {
		return 0, nil
	}
	sock, err := nlbatch.Open(netns.None(), unix.NETLINK_NETFILTER)
	if err != nil {
		return 0, fmt.Errorf("rules: ipset %s: %w", name, err)
	}
	defer sock.Close()
	added := 0
	var errs []error
	changes := make([]nlbatch.Change, len(addrs))
	for i, a := range addrs {
		changes[i] = nlbatch.Change{
			Msg: ipsetAddRequest(name, a),
			Alone: func() error {
				return netlink.IpsetAdd(name, &netlink.IPSetEntry{IP: net.IP(a.AsSlice()), Replace: true})
			},
			Done: func(err error) {
				if err != nil {
					errs = append(errs, fmt.Errorf("rules: adding %s to ipset %s: %w", a, name, err))
					return
				}
				added++
			},
		}
	}
	sock.Make(changes)
	return added, errors.Join(errs...)
}

// ipsetAddRequest is netlink.IpsetAdd's request (with Replace) adding the
// address a to the set name, built as vishvananda/netlink builds it for its
// one-at-a-time call, which it does not expose.
func ipsetAddRequest(name string, a netip.Addr) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(nl.IPSET_CMD_ADD|(unix.NFNL_SUBSYS_IPSET<<8), unix.NLM_F_ACK)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: uint8(unix.AF_NETLINK), Version: nl.NFNETLINK_V0})
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_PROTOCOL, nl.Uint8Attr(nl.IPSET_PROTOCOL)))
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(name)))
	typ := nl.IPSET_ATTR_IPADDR_IPV4
	if a.Is6() {
		typ = nl.IPSET_ATTR_IPADDR_IPV6
	}
	ip := nl.NewRtAttr(typ|int(nl.NLA_F_NET_BYTEORDER), a.AsSlice())
	data := nl.NewRtAttr(nl.IPSET_ATTR_DATA|int(nl.NLA_F_NESTED), nil)
	data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_IP|int(nl.NLA_F_NESTED), ip.Serialize()))
	data.AddChild(&nl.Uint32Attribute{Type: nl.IPSET_ATTR_LINENO | nl.NLA_F_NET_BYTEORDER, Value: 0})
	req.AddData(data)
	return req
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

// changePeerSet adds and removes senders in the family's set, which
// exists, and returns how many entries it changed.
func changePeerSet(v6 bool, added, removed []netip.Addr) (int, error) {
	name := peerSetName(v6)
	changes, err := addToPeerSet(name, added)
	if err != nil {
		return changes, err
	}
	for _, a := range removed {
		if err := netlink.IpsetDel(name, &netlink.IPSetEntry{IP: net.IP(a.AsSlice())}); err != nil && !errors.Is(err, unix.ENOENT) {
			return changes, fmt.Errorf("rules: removing %s from ipset %s: %w", a, name, err)
		}
		changes++
	}
	return changes, nil
}
