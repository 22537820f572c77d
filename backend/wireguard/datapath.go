package wireguard

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/pkg/metrics"
)

// datapathInfo says which datapath each WireGuard device runs on.
var datapathInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Namespace: metrics.Namespace,
	Name:      "wireguard_datapath",
	Help:      "1 for the datapath (kernel or userspace) each WireGuard device of this node runs on.",
}, []string{"device", "datapath"})

func init() { metrics.MustRegister(datapathInfo) }

// datapath configures the WireGuard devices, kernel or userspace, through
// one wgctrl client; for a userspace device it also runs wireguard-go.
type datapath struct {
	log *zap.Logger
	now func() time.Time

	mu        sync.Mutex
	client    *wgctrl.Client
	user      map[string]*userDevice
	stale     map[string]lingering // by device
	reported  map[string]bool      // device -> userspace, as last reported
	conflicts string
	cache     warmCache
	standby   map[string]*DeviceSpec // devices another agent still runs (standby.go)
	closed    bool
}

func openDatapath(env backend.DatapathEnv) (backend.Datapath, error) {
	d := &datapath{log: env.Log, now: time.Now, user: map[string]*userDevice{}, stale: map[string]lingering{}, reported: map[string]bool{},
		standby: map[string]*DeviceSpec{}, cache: warmCache{path: filepath.Join(env.StateDir, cacheFile)}}
	d.warmStart()
	return d, nil
}

// Ensure implements backend.Datapath. The devices themselves are the kernel
// reconciler's (a wireguard link, or a TUN for userspace); here they get
// their keys and peers, and a userspace one its wireguard-go.
func (d *datapath) Ensure(want backend.DatapathSpec, _ []netip.Addr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if want == nil {
		d.stopExcept(nil)
		d.cache.remove()
		return nil
	}
	spec, ok := want.(*Spec)
	if !ok {
		return fmt.Errorf("wireguard datapath given a %T", want)
	}
	if err := d.openClient(); err != nil {
		return err
	}
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(spec.Devices)) {
		if err := d.ensureDevice(spec.Devices[name]); err != nil {
			errs = append(errs, err)
		}
	}
	d.stopExcept(spec.Devices)
	if c := strings.Join(spec.Conflicts, "; "); c != d.conflicts {
		if c != "" {
			d.log.Warn("peers left out of the WireGuard devices", zap.Strings("conflicts", spec.Conflicts))
		}
		d.conflicts = c
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	d.cache.save(spec, d.log)
	return nil
}

// openClient opens the wgctrl client once, in the agent's network
// namespace, as the devices are.
func (d *datapath) openClient() error {
	if d.client != nil {
		return nil
	}
	c, err := wgctrl.New()
	if err != nil {
		return fmt.Errorf("opening wgctrl: %w", err)
	}
	d.client = c
	return nil
}

func (d *datapath) ensureDevice(ds *DeviceSpec) error {
	wgName := ds.Name
	var fresh *userDevice
	if ds.Userspace {
		link, err := netlink.LinkByName(ds.Name)
		if err != nil {
			return fmt.Errorf("TUN device %s: %w", ds.Name, err)
		}
		u := d.user[ds.Name]
		if u != nil && !u.alive(link.Attrs().Index) {
			u.close()
			delete(d.user, ds.Name)
			u = nil
		}
		if u == nil && heldElsewhere(ds.Name) {
			d.standBy(ds)
			d.report(ds)
			return nil
		}
		delete(d.standby, ds.Name)
		if u == nil {
			if u, err = startUserDevice(ds.Name, d.log.With(zap.String("device", ds.Name))); err != nil {
				return err
			}
			d.user[ds.Name] = u
			fresh = u
		}
		wgName = u.sock
	} else if u := d.user[ds.Name]; u != nil { // switched to the kernel's device
		u.close()
		delete(d.user, ds.Name)
	}
	if d.stale[ds.Name] == nil {
		d.stale[ds.Name] = lingering{}
	}
	changed, err := configure(d.client, wgName, ds, d.stale[ds.Name], d.now())
	if err != nil {
		return err
	}
	if fresh != nil {
		fresh.greet(ds.PrivateKey.k.PublicKey(), ds.Peers)
	}
	if !d.report(ds) && changed {
		d.log.Debug("WireGuard peers updated", zap.String("device", ds.Name), zap.Int("peers", len(ds.Peers)))
	}
	return nil
}

// report logs and exports the device's datapath when it is new or changed,
// and says whether it did.
func (d *datapath) report(ds *DeviceSpec) bool {
	if was, ok := d.reported[ds.Name]; !ok || was != ds.Userspace {
		dp, other := "kernel", "userspace"
		if ds.Userspace {
			dp, other = other, dp
		}
		d.log.Info("WireGuard device configured", zap.String("device", ds.Name), zap.String("datapath", dp),
			zap.String("why", ds.Why), zap.Int("port", ds.Port), zap.Int("peers", len(ds.Peers)))
		datapathInfo.WithLabelValues(ds.Name, dp).Set(1)
		datapathInfo.DeleteLabelValues(ds.Name, other)
		d.reported[ds.Name] = ds.Userspace
		return true
	}
	return false
}

// stopExcept stops the userspace devices not in keep, and forgets the
// reports of devices no longer wanted.
func (d *datapath) stopExcept(keep map[string]*DeviceSpec) {
	for name := range d.standby {
		if ds := keep[name]; ds == nil || !ds.Userspace {
			delete(d.standby, name)
		}
	}
	for name, u := range d.user {
		if ds := keep[name]; ds == nil || !ds.Userspace {
			if err := u.close(); err != nil {
				d.log.Info("closing WireGuard userspace device", zap.String("device", name), zap.Error(err))
			}
			delete(d.user, name)
		}
	}
	for name, userspace := range d.reported {
		if keep[name] == nil {
			delete(d.stale, name)
			dp := "kernel"
			if userspace {
				dp = "userspace"
			}
			datapathInfo.DeleteLabelValues(name, dp)
			delete(d.reported, name)
		}
	}
}

// Report implements backend.DatapathReporter: each device's datapath, for
// /readyz.
func (d *datapath) Report() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(d.reported)) {
		dp := "kernel"
		if d.reported[name] {
			dp = "userspace (wireguard-go)"
		}
		if d.standby[name] != nil {
			dp += ", standing by: another agent still runs it"
		}
		parts = append(parts, name+" "+dp)
	}
	if len(parts) == 0 {
		return ""
	}
	return "wireguard: " + strings.Join(parts, ", ")
}

// Close implements backend.Datapath: a userspace device stops (its TUN
// stays, dropping what is routed to it until the next agent attaches); a
// kernel device keeps forwarding.
func (d *datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	d.stopExcept(nil)
	if d.client != nil {
		return d.client.Close()
	}
	return nil
}
