// Package reuseport lets two agents on one node listen on the same port: a
// surge upgrade starts the new agent while the old one still serves its
// tunnel, health and metrics ports.
package reuseport

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// Control sets SO_REUSEPORT on a socket before its bind; it is a
// net.ListenConfig.Control. The kernel lets a second socket bind the port
// only if every socket on it did so, and only for the same user.
func Control(_, _ string, c syscall.RawConn) error {
	var err error
	if cerr := c.Control(func(fd uintptr) {
		err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); cerr != nil {
		return cerr
	}
	return err
}
