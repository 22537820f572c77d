package kernel

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// InNamespace runs fn on an OS thread of its own, locked and switched into
// the network namespace ns; ns not open (netns.None()) means the current
// one, as for a netlink handle. Sockets and devices fn opens stay in ns
// whichever thread uses them later. fn may itself move the thread into yet
// another namespace (netns.NewNamed does): the thread returns to the
// scheduler only once back in its original namespace, and one that cannot go
// back stays locked and ends with its goroutine, so no other goroutine ever
// runs in a namespace it did not ask for. fn must not rely on goroutines it
// starts being in ns.
//
// containernetworking/plugins' ns.NetNS.Do does the same, but for its own
// NetNS type opened from a path, where overlayd holds netns.NsHandle values
// (netlink's, test/netnstest's). Adopting it would add a module the daemon
// needs nothing else of, and raise the go directive to its go 1.26.8, to
// save thirty lines.
func InNamespace(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread() // not moved yet
			errc <- fmt.Errorf("getting the current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if ns.IsOpen() {
			if err := netns.Set(ns); err != nil {
				runtime.UnlockOSThread() // a failed setns leaves the thread where it was
				errc <- fmt.Errorf("entering network namespace %s: %w", ns, err)
				return
			}
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}
