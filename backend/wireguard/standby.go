package wireguard

import (
	"time"

	"github.com/vishvananda/netns"
	"go.uber.org/zap"

	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/pkg/tunqueue"
)

// During a surge upgrade the new agent starts while the old one still runs
// wireguard-go on the TUN device. Two wireguard-go instances cannot share
// it as two udp datapaths can: each would hold sessions of its own, and the
// kernel would split the peers' datagrams between their sockets (and the
// control socket's name is one per namespace). So the new agent stands by:
// it reports ready (the old pod is only stopped once the new one is ready),
// watches the device's queues, and starts wireguard-go within a few
// milliseconds of the old agent letting go, then handshakes with every peer
// (greet). What is lost is what is sent in that gap, as in a restart.

// releasePoll is how often a standing-by agent looks at the device.
const releasePoll = 5 * time.Millisecond

// heldElsewhere reports whether another process has a queue of the TUN
// device name open (this one has none: it runs no wireguard-go on it).
func heldElsewhere(name string) bool {
	n, err := tunqueue.Queues(name)
	return err == nil && n > 0
}

// standBy records that ds is wanted of a device another agent runs, and
// starts watching for its release once. Called with d.mu held.
func (d *datapath) standBy(ds *DeviceSpec) {
	first := d.standby[ds.Name] == nil
	d.standby[ds.Name] = ds
	if !first {
		return
	}
	d.log.Info("another agent runs the WireGuard device; standing by until it lets go", zap.String("device", ds.Name))
	ns, err := netns.Get() // the agent's namespace, where the device is
	if err != nil {
		d.log.Warn("cannot watch the WireGuard device", zap.String("device", ds.Name), zap.Error(err))
		return
	}
	go func() {
		defer ns.Close()
		kernel.InNamespace(ns, func() error {
			for {
				time.Sleep(releasePoll)
				if done := d.takeOver(ds.Name); done {
					return nil
				}
			}
		})
	}()
}

// takeOver starts the device once the other agent has let go of it; it
// reports whether watching is over.
func (d *datapath) takeOver(name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	ds := d.standby[name]
	if ds == nil || d.closed {
		return true // no longer wanted, or the agent is stopping
	}
	if heldElsewhere(name) {
		return false
	}
	delete(d.standby, name)
	if err := d.ensureDevice(ds); err != nil {
		// The next pass tries again.
		d.log.Warn("taking over the WireGuard device", zap.String("device", name), zap.Error(err))
		return true
	}
	d.log.Info("the previous agent let go of the WireGuard device; running it", zap.String("device", name))
	return true
}
