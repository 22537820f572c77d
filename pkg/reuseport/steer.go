package reuseport

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// SteerToNewest makes the kernel deliver every datagram for the port of
// the SO_REUSEPORT socket fd to the socket that joined second, instead of
// spreading flows over the group by hash. A stopping agent calls it once
// its successor has bound the port: the group is then the two of them, the
// successor's socket second; from here on nothing more lands in the
// stopping agent's receive queue, which it reads empty before closing
// (datagrams queued on a socket are lost when it closes). The program stays
// with the group; an index past its end makes the kernel fall back to the
// hash, so with one socket left it has no effect.
func SteerToNewest(fd int) error {
	prog := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 1}}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fprog); err != nil {
		return fmt.Errorf("attaching the reuseport steering program: %w", err)
	}
	return nil
}

// Queued is the size of the next datagram waiting in the UDP socket fd's
// receive queue, 0 when the queue is empty.
func Queued(fd int) (int, error) {
	n, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	if err != nil {
		return 0, fmt.Errorf("reading the receive queue: %w", err)
	}
	return n, nil
}
