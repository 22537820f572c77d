package backend

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"

	"go.uber.org/zap"
)

// DatapathSpec is the desired state of one datapath that is not a kernel
// table: what a Datapath applies. Its package owns the type; the loop only
// merges, copies and compares it.
type DatapathSpec interface {
	// Clone returns a copy that shares nothing mutable with the original.
	Clone() DatapathSpec
	// Merge adds o, a spec of the same datapath, to this one in place; an
	// error when the two cannot both hold (e.g. two ports for one device).
	Merge(o DatapathSpec) error
}

// Datapath applies the specs of one datapath. The loop calls Ensure on
// every pass with the whole desired spec, or nil when none is wanted.
type Datapath interface {
	// Ensure makes the datapath match spec, accepting traffic from senders
	// (State.Senders); a nil spec stops it, leaving its devices in place.
	Ensure(spec DatapathSpec, senders []netip.Addr) error
	// Close releases what the process holds; the datapath's devices and
	// files stay for the next run.
	Close() error
}

// DatapathReporter is a Datapath that says how it runs (e.g. WireGuard's
// kernel or userspace device), for the datapath condition of /readyz.
type DatapathReporter interface {
	// Report is one line for operators; "" for nothing to say.
	Report() string
}

// Reports are the reports of the datapaths that have one, in name order.
func (d Datapaths) Reports() []string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(d)) {
		if r, ok := d[name].(DatapathReporter); ok {
			if s := r.Report(); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

// DatapathEnv is what a datapath is opened with.
type DatapathEnv struct {
	// StateDir holds files a datapath keeps across restarts (beside
	// subnet.env).
	StateDir string
	Log      *zap.Logger
}

// DatapathFactory opens a datapath. It may resume what the previous run
// left (a warm start) before the loop's first pass: a userspace datapath
// forwards nothing while no process runs it.
type DatapathFactory func(env DatapathEnv) (Datapath, error)

var (
	datapathsMu sync.RWMutex
	datapaths   = map[string]DatapathFactory{}
)

// RegisterDatapath makes a datapath available under name, the key of its
// specs in State.Datapaths; datapath packages call it from init.
func RegisterDatapath(name string, f DatapathFactory) {
	datapathsMu.Lock()
	defer datapathsMu.Unlock()
	if _, dup := datapaths[name]; dup {
		panic("backend: datapath " + name + " registered twice")
	}
	datapaths[name] = f
}

// Datapaths are the opened datapaths, by name.
type Datapaths map[string]Datapath

// OpenDatapaths opens every registered datapath, in name order.
func OpenDatapaths(env DatapathEnv) (Datapaths, error) {
	datapathsMu.RLock()
	defer datapathsMu.RUnlock()
	out := Datapaths{}
	for _, name := range slices.Sorted(maps.Keys(datapaths)) {
		dp, err := datapaths[name](DatapathEnv{StateDir: env.StateDir, Log: env.Log.Named(name)})
		if err != nil {
			out.Close()
			return nil, fmt.Errorf("opening datapath %s: %w", name, err)
		}
		out[name] = dp
	}
	return out, nil
}

// Close closes every datapath.
func (d Datapaths) Close() error {
	var errs []error
	for name, dp := range d {
		if err := dp.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing datapath %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}
