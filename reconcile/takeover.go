package reconcile

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/pkg/flanneld"
	"github.com/overlayd/overlayd/pkg/health"
	"github.com/overlayd/overlayd/pkg/kernel"
)

// Taking over a node where flanneld ran, in place: while flanneld runs,
// overlayd waits and says so (it must never fight another agent over the
// same devices and routes); once it is gone, flanneld's devices are adopted
// before the lease is published (a vxlan device keeps its MAC, so no peer
// changes anything), the first pass puts overlayd's routes beside (IPv6: in
// place of) flanneld's, with the same next hops, and
// what is left of flanneld (routes, chains, its udp TUN) is removed only
// once overlayd's datapath and rules are in.

// flanneldPoll is how often a running flanneld is looked for again.
const flanneldPoll = time.Second

// takeover is the state of taking over from flanneld.
type takeover struct {
	found  bool     // something of flanneld's was adopted or is to be removed
	remove []string // devices to delete once the datapath is in place
	done   bool     // leftovers removed
	// waitingFor is the pid of the flanneld the loop waits for, 0 when none.
	waitingFor int
	again      bool // a flanneld ran while this agent did: adopt again once it is gone
}

// waitForFlanneld returns once no flanneld runs in this network namespace.
func (l *Loop) waitForFlanneld(ctx context.Context) error {
	for {
		if !l.flanneldRunning(health.Lease) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(flanneldPoll):
		}
	}
}

// flanneldRunning reports whether a flanneld runs on the node and, when that
// changes, says so in the log, on the condition cond and in an Event.
func (l *Loop) flanneldRunning(cond string) bool {
	pid, err := l.cfg.FlanneldRunning()
	if err != nil {
		l.log.Warn("cannot tell whether flanneld runs on this node", zap.Error(err))
		return false
	}
	was := l.takeover.waitingFor
	l.takeover.waitingFor = pid
	switch {
	case pid != 0 && pid != was:
		msg := fmt.Sprintf("flanneld (pid %d) runs on this node: overlayd waits for it to stop and then takes its place", pid)
		l.log.Warn(msg)
		l.warn(EventFlanneldRunning, "%s", msg)
		l.cfg.Status.Set(cond, false, msg)
	case pid == 0 && was != 0:
		l.log.Info("flanneld stopped; taking its place", zap.Int("pid", was))
	}
	return pid != 0
}

// adoptFlanneld adopts or marks for removal the devices flanneld left, and
// records the MACs of the devices in place, before anything is published.
func (l *Loop) adoptFlanneld() error {
	links, err := l.cfg.Kernel.Links()
	if err != nil {
		return err
	}
	adopters := backend.Adopters()
	for _, link := range links {
		if link.Ours() {
			continue
		}
		for _, a := range adopters {
			to, ok := a.TakeOver(link)
			if !ok {
				continue
			}
			l.takeover.found = true
			switch {
			case to.Rename != "":
				if err := l.cfg.Kernel.Adopt(link.Name, to.Rename); err != nil {
					return fmt.Errorf("taking over %s: %w", link.Name, err)
				}
			case to.Remove:
				l.takeover.remove = append(l.takeover.remove, link.Name)
			}
		}
	}
	macs, err := l.cfg.Kernel.OwnMACs()
	if err != nil {
		return err
	}
	l.node.LinkMACs = macs
	return nil
}

// finishTakeover removes what is left of flanneld once a pass has put
// overlayd's datapath and rules in place: its chains, its udp TUN, and its
// routes into the pod network (those to current peers were replaced in
// place by the pass). Retried on the next pass until it succeeds.
func (l *Loop) finishTakeover(want backend.State) error {
	if l.takeover.done {
		return nil
	}
	if l.cfg.Rules != nil {
		removed, err := l.cfg.Rules.RemoveForeign(flanneld.Chains, flanneld.Tables)
		if err != nil {
			return fmt.Errorf("removing flanneld's iptables chains and nftables tables: %w", err)
		}
		l.takeover.found = l.takeover.found || removed > 0
	}
	for _, name := range l.takeover.remove {
		if err := l.cfg.Kernel.RemoveLink(name); err != nil {
			return fmt.Errorf("removing flanneld's %s: %w", name, err)
		}
	}
	if l.takeover.found {
		if _, err := l.cfg.Kernel.RemoveRoutes(l.flanneldRoute(want)); err != nil {
			return fmt.Errorf("removing flanneld's routes: %w", err)
		}
		l.log.Info("took the node over from flanneld: nothing of it is left")
	}
	l.takeover.done = true
	return nil
}

// flanneldRoute selects flanneld's routes into the pod network: the ones it
// adds (protocol boot) through overlayd's devices or the underlay, and its
// blackhole for the own subnet (--ip-blackhole-route).
func (l *Loop) flanneldRoute(want backend.State) func(kernel.RouteInfo) bool {
	devs := map[string]bool{l.node.Underlay.Iface.Name: true}
	for _, link := range want.Links {
		devs[link.Name] = true
	}
	networks := []netip.Prefix{l.cfg.Net.Network, l.cfg.Net.IPv6Network}
	return func(r kernel.RouteInfo) bool {
		if r.Protocol != flanneld.RouteProtocol || (!r.Blackhole && !devs[r.Dev]) {
			return false
		}
		for _, n := range networks {
			if n.IsValid() && n.Bits() <= r.Dst.Bits() && n.Contains(r.Dst.Addr()) {
				return true
			}
		}
		return false
	}
}
