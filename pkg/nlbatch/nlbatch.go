// Package nlbatch sends netlink requests in batches: many requests in one
// socket write, their acknowledgements read after it. vishvananda/netlink
// sends each request on its own and waits for its answer, two system calls
// and a round trip per entry, and has no batch call; this is a small layer
// on its primitives (nl.NetlinkRequest, nl.NetlinkSocket). The kernel
// handles the messages of one write in order, each as if sent alone, and
// acknowledges each. Callers build the requests (with NLM_F_ACK).
package nlbatch

import (
	"encoding/binary"
	"fmt"
	"syscall"
	"time"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// MinBatch is the fewest requests worth a batch; callers send fewer one by
// one through vishvananda/netlink.
const MinBatch = 4

// receiveTimeout bounds the wait for an answer: a kernel that never
// answers must not hang the caller.
const receiveTimeout = 10 * time.Second

// request is one request of a batch and what to do with its outcome.
type request struct {
	msg  *nl.NetlinkRequest
	done func(error)
}

// Socket is a netlink socket batches are written to.
type Socket struct {
	sock *nl.NetlinkSocket
}

// Open opens a socket of the netlink protocol in the network namespace ns
// (netns.None() for the current one).
func Open(ns netns.NsHandle, protocol int) (*Socket, error) {
	sock, err := nl.GetNetlinkSocketAt(ns, netns.None(), protocol)
	if err != nil {
		return nil, fmt.Errorf("opening netlink: %w", err)
	}
	tv := unix.NsecToTimeval(receiveTimeout.Nanoseconds())
	if err := sock.SetReceiveTimeout(&tv); err != nil {
		sock.Close()
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	return &Socket{sock: sock}, nil
}

// Close closes the socket.
func (s *Socket) Close() { s.sock.Close() }

// Change is one change to make: its request for a batch, the call that
// makes it alone through vishvananda/netlink, and what to do with the
// outcome.
type Change struct {
	Msg   *nl.NetlinkRequest
	Alone func() error
	Done  func(error)
}

// Make makes the changes: in batches when there are at least MinBatch of
// them, else each alone. A change whose batched request failed is made
// again alone, so that its error is the single call's own (and a call that
// knows a way around a refusal gets to use it).
func (s *Socket) Make(changes []Change) {
	if len(changes) < MinBatch {
		for _, c := range changes {
			c.Done(c.Alone())
		}
		return
	}
	reqs := make([]request, len(changes))
	for i, c := range changes {
		reqs[i] = request{msg: c.Msg, done: func(err error) {
			if err != nil {
				err = c.Alone()
			}
			c.Done(err)
		}}
	}
	s.run(reqs)
}

// batchBytes and batchRequests bound one write. The acknowledgements of
// its requests must fit in the socket's receive buffer, where the kernel
// counts each at the size of its buffer (about 1 KiB), not of its 36 bytes:
// the default 208 KiB holds some 200.
const (
	batchBytes    = 32 << 10
	batchRequests = 128
)

// run sends reqs in writes of up to batchRequests and batchBytes and calls
// each request's done with the kernel's answer. An error of the socket
// itself fails every request not answered yet; those may or may not have
// been applied, and Make makes each failed one again alone.
func (s *Socket) run(reqs []request) {
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
		s.send(buf, reqs[:n])
		reqs = reqs[n:]
	}
}

// write sends buf to the kernel. The socket is non-blocking (nl's own
// reads wait in the runtime's poller): a full send buffer is waited out,
// briefly, as nl.NetlinkSocket.Send would.
func (s *Socket) write(buf []byte) error {
	to := &unix.SockaddrNetlink{Family: unix.AF_NETLINK}
	for tries := 0; ; tries++ {
		err := unix.Sendto(s.sock.GetFd(), buf, 0, to)
		if (err != unix.EAGAIN && err != unix.EINTR) || tries == 100 {
			return err
		}
		time.Sleep(time.Millisecond)
	}
}

// send writes one batch and reads its acknowledgements.
func (s *Socket) send(buf []byte, reqs []request) {
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
	if err := s.write(buf); err != nil {
		failAll(fmt.Errorf("netlink write: %w", err))
		return
	}
	for len(waiting) > 0 {
		msgs, _, err := s.sock.Receive()
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
