package lab

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Capture counts the frames crossing one interface of a host, and those
// that carry a marker in the clear (what `tcpdump -i <iface>` would show,
// without needing tcpdump): a raw AF_PACKET socket in the host's namespace.
type Capture struct {
	fd     int
	marker []byte
	done   chan struct{}
	exited chan struct{}

	mu      sync.Mutex
	frames  int
	matches int
	err     error
}

// StartCapture captures every frame, both directions, on the host's
// interface iface until Stop.
func (h *Host) StartCapture(iface string, marker []byte) (*Capture, error) {
	c := &Capture{fd: -1, marker: marker, done: make(chan struct{}), exited: make(chan struct{})}
	err := h.Do(func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		proto := htons(unix.ETH_P_ALL)
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
		if err != nil {
			return fmt.Errorf("opening a packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("binding a packet socket to %s: %w", iface, err)
		}
		// Reads wake up now and then, so Stop never waits for traffic.
		tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		c.fd = fd
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("capturing on %s of %s: %w", iface, h.NS, err)
	}
	go c.read()
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *Capture) read() {
	defer close(c.exited)
	buf := make([]byte, 1<<16)
	for {
		select {
		case <-c.done:
			return
		default:
		}
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		c.mu.Lock()
		if err != nil {
			c.err = err
			c.mu.Unlock()
			return
		}
		c.frames++
		if bytes.Contains(buf[:n], c.marker) {
			c.matches++
		}
		c.mu.Unlock()
	}
}

// Stop ends the capture and returns the frames seen and those carrying the
// marker.
func (c *Capture) Stop() (frames, matches int, err error) {
	close(c.done)
	<-c.exited // a read returns within its timeout
	c.mu.Lock()
	defer c.mu.Unlock()
	unix.Close(c.fd)
	return c.frames, c.matches, c.err
}
