package kernel

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// inNS runs fn on a thread switched into the reconciler's namespace. The
// thread returns to the scheduler only once back in its own namespace; one
// that cannot go back stays locked and ends with its goroutine.
func (r *Reconciler) inNS(fn func() error) error {
	if !r.ns.IsOpen() {
		return fn() // the current namespace
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(r.ns); err != nil {
			errc <- fmt.Errorf("entering network namespace: %w", err)
			return
		}
		ferr := fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}
