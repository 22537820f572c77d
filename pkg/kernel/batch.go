package kernel

import (
	"encoding/binary"
	"fmt"
	"net"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// A batch of netlink requests goes to the kernel in one socket write, and
// their acknowledgements are read after it. vishvananda/netlink sends each
// request on its own and waits for its answer, two system calls and a
// round trip per entry; it has no batch call, so this small layer builds
// the neighbour and route messages on its primitives (nl.NetlinkRequest,
// nl.RtAttr, nl.NetlinkSocket). The kernel handles the messages of one
// write in order, each as if sent alone, and acknowledges each.

// batchBytes and batchRequests bound one write. The acknowledgements of
// its requests must fit in the socket's receive buffer, where the kernel
// counts each at the size of its buffer (about 1 KiB), not of its 36 bytes:
// the default 208 KiB holds some 200.
const (
	batchBytes    = 32 << 10
	batchRequests = 128
)

// minBatch is the fewest entries worth a batch; fewer go one by one.
const minBatch = 4

// nlRequest is one request of a batch and what to do with its outcome.
type nlRequest struct {
	msg  *nl.NetlinkRequest
	done func(error)
}

// batcher owns the netlink socket batches are written to.
type batcher struct {
	sock *nl.NetlinkSocket
}

func (b *batcher) close() {
	if b.sock != nil {
		b.sock.Close()
	}
}

// run sends reqs in writes of up to batchRequests and batchBytes and calls
// each request's done with the kernel's answer. An error of the socket
// itself fails every request not answered yet; those may or may not have
// been applied, and the callers try each failed one again alone.
func (b *batcher) run(reqs []nlRequest) {
	for len(reqs) > 0 {
		var buf []byte
		n := 0
		for n < len(reqs) && n < batchRequests {
			m := reqs[n].msg.Serialize()
			if n > 0 && len(buf)+len(m) > batchBytes {
				break
			}
			buf = append(buf, m...)
			n++
		}
		b.send(buf, reqs[:n])
		reqs = reqs[n:]
	}
}

// send writes one batch and reads its acknowledgements.
func (b *batcher) send(buf []byte, reqs []nlRequest) {
	waiting := make(map[uint32]func(error), len(reqs))
	for _, r := range reqs {
		waiting[r.msg.Seq] = r.done
	}
	failAll := func(err error) {
		for seq, done := range waiting {
			done(err)
			delete(waiting, seq)
		}
	}
	if err := unix.Sendto(b.sock.GetFd(), buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		failAll(fmt.Errorf("netlink write: %w", err))
		return
	}
	for len(waiting) > 0 {
		msgs, _, err := b.sock.Receive()
		if err != nil {
			failAll(fmt.Errorf("netlink read: %w", err))
			return
		}
		for _, m := range msgs {
			done, ok := waiting[m.Header.Seq]
			if !ok || m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				continue // not an answer to this batch
			}
			delete(waiting, m.Header.Seq)
			if errno := int32(binary.NativeEndian.Uint32(m.Data[:4])); errno != 0 {
				done(syscall.Errno(-errno))
			} else {
				done(nil)
			}
		}
	}
}

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
