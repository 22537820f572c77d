// Package tunqueue opens a queue of a persistent multi-queue TUN device with
// the virtio-net header and segmentation offloads, as wireguard-go's tun
// package drives it: the userspace datapaths (udp's, WireGuard's) move
// packets through it in batches.
package tunqueue

import (
	"errors"
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// ValidDeviceName checks a device name against the kernel's limit.
func ValidDeviceName(name string) error {
	if name == "" || len(name) >= unix.IFNAMSIZ {
		return fmt.Errorf("device name %q: want 1-%d characters", name, unix.IFNAMSIZ-1)
	}
	return nil
}

// Attach opens a queue of the existing persistent multi-queue TUN device
// name (in the caller's network namespace) with the virtio-net header and
// offloads enabled, and returns it with its interface index. Another
// process may have queues of the same device open (a second agent during a
// surge upgrade): the kernel spreads the flows routed to the device over
// the queues, and each agent forwards what it reads.
func Attach(name string) (tun.Device, int, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return nil, 0, fmt.Errorf("TUN device %s: %w", name, err)
	}
	if t, ok := link.(*netlink.Tuntap); !ok || t.Mode != netlink.TUNTAP_MODE_TUN {
		return nil, 0, fmt.Errorf("device %s is a %s, not a TUN device", name, link.Type())
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("opening /dev/net/tun: %w", err)
	}
	defer func() {
		if fd >= 0 {
			unix.Close(fd)
		}
	}()
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return nil, 0, fmt.Errorf("TUN device %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_MULTI_QUEUE)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		switch {
		case errors.Is(err, unix.EINVAL):
			// A single-queue device (made by an earlier release): the
			// reconciler replaces it, as its flags are not TUNFlags.
			return nil, 0, fmt.Errorf("attaching to TUN device %s: it is not a multi-queue device: %w", name, err)
		case errors.Is(err, unix.EBUSY):
			return nil, 0, fmt.Errorf("attaching to TUN device %s: another process has it open: %w", name, err)
		}
		return nil, 0, fmt.Errorf("attaching to TUN device %s: %w", name, err)
	}
	// TUNSETIFF creates a device when the name is free. If ours vanished
	// since the lookup we just made a throwaway one; closing fd removes it.
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr); err != nil {
		return nil, 0, fmt.Errorf("reading flags of TUN device %s: %w", name, err)
	}
	if ifr.Uint16()&unix.IFF_PERSIST == 0 {
		return nil, 0, fmt.Errorf("TUN device %s: %w", name, os.ErrNotExist)
	}
	// The wireguard package takes ownership of the descriptor it is given,
	// also when it fails; hand it a duplicate so that our copy can always
	// be closed here without closing someone else's descriptor.
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("duplicating TUN descriptor: %w", err)
	}
	dev, _, err := tun.CreateUnmonitoredTUNFromFD(dup)
	if err != nil {
		return nil, 0, fmt.Errorf("enabling offloads on TUN device %s: %w", name, err)
	}
	// Read the index after attaching: if the device was recreated in
	// between, our descriptor points at the dead one, the datapath sees it
	// closed at once and the next Ensure attaches again.
	link, err = netlink.LinkByName(name)
	if err != nil {
		dev.Close()
		return nil, 0, fmt.Errorf("TUN device %s: %w", name, err)
	}
	return dev, link.Attrs().Index, nil
}

// Queues is the number of queues of the TUN device that processes have
// open: more than one while another agent has joined.
func Queues(name string) (int, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("TUN device %s: %w", name, err)
	}
	t, ok := link.(*netlink.Tuntap)
	if !ok {
		return 0, fmt.Errorf("device %s is a %s, not a TUN device", name, link.Type())
	}
	return t.Queues, nil
}
