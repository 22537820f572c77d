package kernel

import (
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The requests the reconciler sends in batches (pkg/nlbatch), built as
// vishvananda/netlink builds them for its one-at-a-time calls, which it
// does not expose.

// neighSetRequest is netlink.Handle.NeighSet's request for n (its Family,
// LinkIndex, State, Flags, IP and HardwareAddr), answered with an ack.
func neighSetRequest(n *netlink.Neigh) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(unix.RTM_NEWNEIGH, unix.NLM_F_CREATE|unix.NLM_F_REPLACE|unix.NLM_F_ACK)
	req.AddData(&netlink.Ndmsg{Family: uint8(n.Family), Index: uint32(n.LinkIndex), State: uint16(n.State), Flags: uint8(n.Flags)})
	ip := n.IP.To4()
	if ip == nil {
		ip = n.IP.To16()
	}
	req.AddData(nl.NewRtAttr(netlink.NDA_DST, ip))
	req.AddData(nl.NewRtAttr(netlink.NDA_LLADDR, []byte(n.HardwareAddr)))
	return req
}

// routeReplaceRequest is netlink.Handle.RouteReplace's request for rt, for
// the fields netlinkRoute sets (destination, gateway, device, protocol,
// table, scope, type, priority, onlink), answered with an ack.
func routeReplaceRequest(rt *netlink.Route) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE|unix.NLM_F_ACK)
	msg := nl.NewRtMsg()
	msg.Family = uint8(unix.AF_INET)
	dst := rt.Dst.IP.To4()
	if dst == nil {
		msg.Family, dst = uint8(unix.AF_INET6), rt.Dst.IP.To16()
	}
	ones, _ := rt.Dst.Mask.Size()
	msg.Dst_len = uint8(ones)
	msg.Protocol = uint8(rt.Protocol)
	msg.Scope = uint8(rt.Scope)
	msg.Type = uint8(rt.Type)
	msg.Flags = uint32(rt.Flags)
	table := rt.Table
	if table >= 256 {
		msg.Table = unix.RT_TABLE_UNSPEC
	} else {
		msg.Table = uint8(table)
	}
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.RTA_DST, dst))
	if rt.Gw != nil {
		gw := net.IP(rt.Gw).To4()
		if msg.Family == unix.AF_INET6 {
			gw = rt.Gw.To16()
		}
		req.AddData(nl.NewRtAttr(unix.RTA_GATEWAY, gw))
	}
	if table >= 256 {
		req.AddData(nl.NewRtAttr(unix.RTA_TABLE, nl.Uint32Attr(uint32(table))))
	}
	if rt.Priority > 0 {
		req.AddData(nl.NewRtAttr(unix.RTA_PRIORITY, nl.Uint32Attr(uint32(rt.Priority))))
	}
	if rt.LinkIndex > 0 {
		req.AddData(nl.NewRtAttr(unix.RTA_OIF, nl.Uint32Attr(uint32(rt.LinkIndex))))
	}
	return req
}
