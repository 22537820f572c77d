package reconcile

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/pkg/health"
	"github.com/overlayd/overlayd/pkg/kernel"
)

// processOne runs one pass; false when the queue is shut down.
func (l *Loop) processOne(ctx context.Context) bool {
	key, shutdown := l.queue.Get()
	if shutdown {
		return false
	}
	defer l.queue.Done(key)
	l.cfg.Status.Beat()
	start := time.Now()
	err := l.pass(ctx)
	reconcileDuration.Observe(time.Since(start).Seconds())
	reconcileRuns.Inc()
	if err != nil {
		reconcileErrors.Inc()
		retries := l.queue.NumRequeues(key)
		level := l.log.Info
		if retries >= 3 {
			level = l.log.Warn
		}
		level("reconcile failed; retrying", zap.Error(err), zap.Int("retries", retries))
		if retries == 3 {
			l.warn(EventDatapathFailed, "programming the datapath keeps failing (retrying with backoff): %v", err)
		}
		l.full.Store(true) // after a failure, nothing is taken on trust
		l.queue.AddRateLimited(key)
		return true
	}
	l.queue.Forget(key)
	return true
}

// pass computes the whole desired state and makes the node match it; after
// lease changes alone, only the changed peers' part (changed.go).
func (l *Loop) pass(ctx context.Context) error {
	// Taken every pass: a full pass covers them.
	changedPeers, anyChanged := l.cfg.Leases.ChangedPeers()
	if _, synced := l.cfg.Leases.NodeAddresses(); !synced {
		// A partial snapshot would look like departed peers: wait for the
		// full one (its arrival marks the state dirty again).
		l.full.Store(true)
		return nil
	}
	if l.flanneldRunning(health.Datapath) {
		// Never fight another agent over the same kernel state.
		l.takeover.again = true
		l.full.Store(true)
		l.queue.AddAfter(syncKey, flanneldPoll)
		return nil
	}
	if l.takeover.again {
		// A flanneld ran while this agent did: take over what it left.
		l.takeover = takeover{}
		if err := l.adoptFlanneld(); err != nil {
			return err
		}
	}
	if l.full.Swap(false) {
		l.log.Debug("full pass", zap.String("reason", "asked for"))
	} else if done, err := l.passChanged(ctx, changedPeers, anyChanged); done {
		return err
	}
	peers, _ := l.cfg.Leases.Peers()
	l.applyPending()
	if a, _ := l.cfg.Leases.NodeAddresses(); a != l.addrs {
		l.applyNodeAddresses(a)
	}
	want, err := l.desired(peers)
	if err != nil {
		l.cfg.Status.Set(health.Datapath, false, err.Error())
		return err
	}

	// The rules go first: a peer that joins is let in (the ingress filter)
	// before its routes point at it.
	var rulesErr error
	if l.cfg.Rules != nil {
		l.rulesDue.Store(false)
		rulesErr = l.ensureRules(want)
	}

	errs := l.apply(want)
	if len(errs) == 0 {
		l.lastState, l.lastUnordered = &want, false
		l.datapathReady(len(peers))
		// Publish only what this node is now able to receive.
		if err := l.publish(ctx); err != nil {
			errs = append(errs, err)
		}
		l.checkDrains()
	} else {
		l.cfg.Status.Set(health.Datapath, false, errors.Join(errs...).Error())
	}
	if rulesErr != nil {
		errs = append(errs, rulesErr)
	}

	if len(errs) == 0 {
		errs = append(errs, l.finishTakeover(want))
	}
	return errors.Join(errs...)
}

// apply makes the kernel and the datapaths match want. A datapath attaches
// to its devices before routes point into them, and lets go of them only
// after the routes have moved elsewhere.
func (l *Loop) apply(want backend.State) []error {
	var errs []error
	var linkChanges kernel.Changes
	if len(want.Datapaths) > 0 {
		var err error
		if linkChanges, err = l.cfg.Kernel.ApplyLinks(want.Links); err != nil {
			errs = append(errs, fmt.Errorf("kernel: %w", err))
		} else {
			errs = append(errs, l.ensureDatapaths(want, true)...)
		}
	}
	changes, counts, applyErr := l.cfg.Kernel.Apply(want.State)
	changes.Add(linkChanges)
	setKernelEntries(counts)
	if changes.Total() > 0 && l.lastState != nil && sameDesired(want, *l.lastState, l.lastUnordered) {
		// Nothing we wanted changed, yet the kernel had to: repairs.
		for kind, n := range changes.Created {
			repairs.WithLabelValues(kind).Add(float64(n))
		}
		for kind, n := range changes.Updated {
			repairs.WithLabelValues(kind).Add(float64(n))
		}
		l.log.Info("repaired kernel state", zap.Any("created", changes.Created), zap.Any("updated", changes.Updated))
	}
	if applyErr != nil {
		errs = append(errs, fmt.Errorf("kernel: %w", applyErr))
	}
	return append(errs, l.ensureDatapaths(want, false)...)
}

// ensureRules puts the traffic rules want needs in place.
func (l *Loop) ensureRules(want backend.State) error {
	if _, err := l.cfg.Rules.Ensure(l.rulesConfig(want)); err != nil {
		l.cfg.Status.Set(health.Rules, false, err.Error())
		return fmt.Errorf("traffic rules: %w", err)
	}
	l.cfg.Status.Set(health.Rules, true, "")
	return nil
}

// datapathReady reports the datapath as programmed for n peers.
func (l *Loop) datapathReady(n int) {
	detail := fmt.Sprintf("%d peers", n)
	for _, r := range l.cfg.Datapaths.Reports() {
		detail += "; " + r
	}
	l.cfg.Status.Set(health.Datapath, true, detail)
}

func setKernelEntries(counts kernel.Counts) {
	for kind, n := range counts {
		kernelEntries.WithLabelValues(kind).Set(float64(n))
	}
}

// ensureDatapaths brings the wanted datapaths up to date (wanted), or stops
// those no longer wanted (!wanted), in name order.
func (l *Loop) ensureDatapaths(want backend.State, wanted bool) []error {
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(l.cfg.Datapaths)) {
		spec := want.Datapaths[name]
		if (spec != nil) != wanted {
			continue
		}
		if err := l.cfg.Datapaths[name].Ensure(spec, want.Senders); err != nil {
			errs = append(errs, fmt.Errorf("%s datapath: %w", name, err))
		}
	}
	if wanted {
		for name := range want.Datapaths {
			if l.cfg.Datapaths[name] == nil {
				errs = append(errs, fmt.Errorf("%s datapath wanted, but none is registered", name))
			}
		}
	}
	return errs
}
