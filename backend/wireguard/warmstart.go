package wireguard

import (
	"bytes"
	"encoding/json"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/google/renameio/v2"
	"go.uber.org/zap"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// cacheFile holds the userspace devices' last applied peers, beside
// subnet.env, for a warm start. It holds no secret: the private key is read
// from its key file again, and a device with a preshared key is not cached.
const cacheFile = "overlayd-wireguard.json"

type cachedDevice struct {
	Name      string
	Port      int
	KeyFile   string
	Keepalive time.Duration
	Peers     []cachedPeer
}

type cachedPeer struct {
	PublicKey  string
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix
}

type warmCache struct {
	path  string
	saved []byte
}

// save writes the userspace devices of spec, when they changed.
func (c *warmCache) save(spec *Spec, log *zap.Logger) {
	var devs []cachedDevice
	for _, name := range slices.Sorted(maps.Keys(spec.Devices)) {
		ds := spec.Devices[name]
		if !ds.Userspace || !ds.PSK.isZero() || ds.KeyFile == "" {
			continue
		}
		cd := cachedDevice{Name: name, Port: ds.Port, KeyFile: ds.KeyFile, Keepalive: ds.Keepalive}
		for k, p := range ds.Peers {
			cd.Peers = append(cd.Peers, cachedPeer{PublicKey: k.String(), Endpoint: p.Endpoint, AllowedIPs: p.AllowedIPs})
		}
		slices.SortFunc(cd.Peers, func(a, b cachedPeer) int { return bytes.Compare([]byte(a.PublicKey), []byte(b.PublicKey)) })
		devs = append(devs, cd)
	}
	if len(devs) == 0 {
		c.remove()
		return
	}
	data, err := json.Marshal(devs)
	if err != nil || bytes.Equal(data, c.saved) {
		return
	}
	if err := renameio.WriteFile(c.path, data, 0o600, renameio.WithTempDir(filepath.Dir(c.path))); err != nil {
		log.Warn("cannot save the WireGuard peers for a warm start", zap.Error(err))
		return
	}
	c.saved = data
}

func (c *warmCache) remove() {
	if c.saved != nil || fileExists(c.path) {
		os.Remove(c.path)
		c.saved = nil
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// warmStart resumes the userspace devices with the peers the previous run
// applied, before anything else starts: wireguard-go forwards nothing while
// no agent runs, so a restart must resume it within milliseconds rather
// than after the lease store has synced. The first pass then makes the
// devices what is wanted now. A missing or unusable cache only means a cold
// start; a key file that is gone (a key change) too.
func (d *datapath) warmStart() {
	data, err := os.ReadFile(d.cache.path)
	if err != nil {
		return
	}
	var devs []cachedDevice
	if err := json.Unmarshal(data, &devs); err != nil {
		d.log.Info("ignoring unreadable WireGuard warm-start cache", zap.String("path", d.cache.path), zap.Error(err))
		return
	}
	if err := d.openClient(); err != nil {
		d.log.Info("no warm start of the WireGuard datapath", zap.Error(err))
		return
	}
	for _, cd := range devs {
		if !fileExists(cd.KeyFile) {
			d.log.Info("no warm start of a WireGuard device: its key file is gone", zap.String("device", cd.Name))
			continue
		}
		key, err := loadKey(cd.KeyFile)
		if err != nil {
			d.log.Info("no warm start of a WireGuard device", zap.String("device", cd.Name), zap.Error(err))
			continue
		}
		ds := &DeviceSpec{Name: cd.Name, Userspace: true, Port: cd.Port, KeyFile: cd.KeyFile, PrivateKey: Secret{key},
			Keepalive: cd.Keepalive, Peers: map[wgtypes.Key]PeerSpec{}, Why: "resumed from the previous run"}
		for _, p := range cd.Peers {
			if k, err := wgtypes.ParseKey(p.PublicKey); err == nil {
				ds.Peers[k] = PeerSpec{Endpoint: p.Endpoint, AllowedIPs: p.AllowedIPs}
			}
		}
		if err := d.ensureDevice(ds); err != nil {
			d.log.Info("no warm start of a WireGuard device", zap.String("device", cd.Name), zap.Error(err))
			continue
		}
		d.log.Info("WireGuard device resumed from the previous run's peers", zap.String("device", cd.Name), zap.Int("peers", len(ds.Peers)))
	}
	d.cache.saved = data
}
