package tunqueue

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// SteerToNewest makes the kernel hand every packet routed to dev's device
// to the queue attached last, instead of spreading flows over all queues.
// A stopping agent calls it once its successor has joined (the successor's
// queue is the newest), so that nothing more lands in its own queue, which
// the kernel purges when it is detached. With one queue open the program
// picks that queue; it stays on the persistent device, and at the next
// surge it hands the traffic to the newcomer as soon as it attaches.
func SteerToNewest(dev tun.Device) error {
	prog, err := loadReturnOne()
	if err != nil {
		return fmt.Errorf("loading the TUN steering program: %w", err)
	}
	defer unix.Close(prog) // the device holds its own reference
	return withFD(dev, func(fd int) error {
		if err := unix.IoctlSetPointerInt(fd, unix.TUNSETSTEERINGEBPF, prog); err != nil {
			return fmt.Errorf("attaching the TUN steering program: %w", err)
		}
		return nil
	})
}

// withFD runs f with dev's descriptor: through its raw connection, not
// File.Fd, which would switch the descriptor to blocking mode under the
// goroutine reading it.
func withFD(dev tun.Device, f func(fd int) error) error {
	rc, err := dev.File().SyscallConn()
	if err != nil {
		return fmt.Errorf("TUN descriptor: %w", err)
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return fmt.Errorf("TUN descriptor: %w", err)
	}
	return ferr
}

// loadReturnOne loads the socket-filter program "return 1", which as a
// TUN steering program selects queue 1 % queues. Written by hand because
// the program is two instructions: a BPF library (cilium/ebpf) would be a
// large dependency for them.
func loadReturnOne() (int, error) {
	insns := [2]uint64{
		0xb7 | 1<<32, // r0 = 1 (BPF_ALU64|BPF_MOV|BPF_K)
		0x95,         // exit (BPF_JMP|BPF_EXIT)
	}
	license := [4]byte{'G', 'P', 'L', 0}
	// The head of union bpf_attr for BPF_PROG_LOAD; the kernel treats the
	// fields past size as zero.
	attr := struct {
		progType, insnCnt uint32
		insns, license    uint64
		logLevel, logSize uint32
		logBuf            uint64
		kernVersion       uint32
		_                 uint32
	}{
		progType: unix.BPF_PROG_TYPE_SOCKET_FILTER,
		insnCnt:  uint32(len(insns)),
		insns:    uint64(uintptr(unsafe.Pointer(&insns[0]))),
		license:  uint64(uintptr(unsafe.Pointer(&license[0]))),
	}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_LOAD, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(&insns)
	runtime.KeepAlive(&license)
	if errno != 0 {
		return -1, errno
	}
	unix.CloseOnExec(int(fd))
	return int(fd), nil
}

// Pending reports whether packets wait in dev's queue to be read.
func Pending(dev tun.Device) (bool, error) {
	var pending bool
	err := withFD(dev, func(fd int) error {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			n, err := unix.Poll(fds, 0)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return fmt.Errorf("polling the TUN queue: %w", err)
			}
			pending = n > 0 && fds[0].Revents&unix.POLLIN != 0
			return nil
		}
	})
	return pending, err
}
