package udp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/google/renameio/v2"
	"go.uber.org/zap"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/pkg/procs"
	"github.com/overlayd/overlayd/pkg/udptunnel"
)

// cacheFile holds the peer table the datapath last applied, beside
// subnet.env, for a warm start.
const cacheFile = "overlayd-udp.json"

// datapath runs pkg/udptunnel for the loop, and keeps a copy of the last
// applied spec on disk for a warm start.
type datapath struct {
	t     *udptunnel.Tunnel
	cache string
	saved []byte // what the cache file holds
	log   *zap.Logger
}

// openDatapath re-attaches the tunnel with the peer table the previous run
// applied, before anything else starts: the userspace datapath forwards
// nothing while no agent runs, so a restart must resume it within
// milliseconds rather than after the lease store has synced. The loop's
// first pass then replaces the table with the current one (or stops the
// datapath). A missing or unusable cache only means a cold start.
func openDatapath(env backend.DatapathEnv) (backend.Datapath, error) {
	d := &datapath{t: udptunnel.New(env.Log), cache: filepath.Join(env.StateDir, cacheFile), log: env.Log}
	data, err := os.ReadFile(d.cache)
	if err != nil {
		return d, nil
	}
	var spec udptunnel.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		d.log.Info("ignoring unreadable udp datapath cache", zap.String("path", d.cache), zap.Error(err))
		return d, nil
	}
	if err := d.t.Ensure(&spec); err != nil {
		d.log.Info("no warm start of the udp datapath", zap.String("path", d.cache), zap.Error(err))
		return d, nil
	}
	d.saved = data
	d.log.Info("udp datapath resumed from the previous run's peer table", zap.Int("peers", len(spec.Peers)))
	return d, nil
}

// Ensure implements backend.Datapath.
func (d *datapath) Ensure(want backend.DatapathSpec, senders []netip.Addr) error {
	if want == nil {
		if err := d.t.Ensure(nil); err != nil {
			return err
		}
		if d.saved != nil || fileExists(d.cache) {
			os.Remove(d.cache)
			d.saved = nil
		}
		return nil
	}
	s, ok := want.(*Spec)
	if !ok {
		return fmt.Errorf("udp datapath given a %T", want)
	}
	spec := s.Spec
	spec.Sources = senders
	if err := d.t.Ensure(&spec); err != nil {
		return err
	}
	data, err := json.Marshal(spec)
	if err != nil || bytes.Equal(data, d.saved) {
		return err
	}
	if err := renameio.WriteFile(d.cache, data, 0o600, renameio.WithTempDir(filepath.Dir(d.cache))); err != nil {
		d.log.Warn("cannot save the udp peer table for a warm start", zap.Error(err))
		return nil
	}
	d.saved = data
	return nil
}

// handoverTimeout bounds how long a stopping agent waits for its successor
// to join the datapath: less than the DaemonSet's grace period (10 s), and
// much more than a successor takes (it attaches at its start, from the
// warm-start cache).
const handoverTimeout = 8 * time.Second

// Close implements backend.Datapath: the device stays for the next run.
// During a surge upgrade the new agent joins the device and the port while
// this one still serves them; this one lets go only once it has, and
// hands over what is queued for it (Tunnel.HandOver), so the upgrade loses
// nothing.
func (d *datapath) Close() error {
	successor := func() bool {
		pid, err := procs.Sibling()
		return err == nil && pid != 0
	}
	if d.t.AwaitSuccessor(handoverTimeout, successor) {
		d.log.Info("another agent on this node has joined the udp datapath; handing it over")
		return d.t.HandOver()
	}
	return d.t.Close()
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
