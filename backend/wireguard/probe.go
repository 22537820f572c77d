package wireguard

import (
	"errors"
	"fmt"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// probeDevice is the throwaway device the probe creates and deletes.
const probeDevice = "overlayd-wgprb"

var probe struct {
	once   sync.Once
	kernel bool
	why    string
}

// kernelWireGuard reports whether the kernel has WireGuard, found out once
// per process by creating (and deleting) a WireGuard device in the agent's
// network namespace, which also loads the module where it exists but is not
// loaded; why says how it was decided, for the log and /readyz.
func kernelWireGuard() (bool, string) {
	probe.once.Do(func() {
		err := netlink.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: probeDevice}})
		if err == nil || errors.Is(err, unix.EEXIST) {
			if l, lerr := netlink.LinkByName(probeDevice); lerr == nil {
				netlink.LinkDel(l)
			}
			probe.kernel, probe.why = true, "the kernel has WireGuard"
			return
		}
		probe.why = fmt.Sprintf("the kernel has no WireGuard (creating a wireguard device: %v)", err)
	})
	return probe.kernel, probe.why
}

// datapathChoice reports whether the devices run in wireguard-go, and why.
func (b *wgBackend) datapathChoice() (userspace bool, why string) {
	switch b.opts.Datapath {
	case DatapathKernel:
		return false, `Backend.Datapath is "kernel"`
	case DatapathUserspace:
		return true, `Backend.Datapath is "userspace"`
	}
	k, why := kernelWireGuard()
	return !k, why + ` (Backend.Datapath "auto")`
}
