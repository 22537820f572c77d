package wireguard

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/google/renameio/v2"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// DefaultKeyFile is flanneld's private key file; WIREGUARD_KEY_FILE, as for
// flanneld, or --wireguard-key-file names another.
const DefaultKeyFile = "/run/flannel/wgkey"

var keys struct {
	sync.Mutex
	path   string
	loaded map[string]wgtypes.Key // by file
}

// SetKeyFile names the private key file (cmd/overlayd's flag) for the
// backends built from then on.
func SetKeyFile(path string) {
	keys.Lock()
	defer keys.Unlock()
	keys.path = path
}

// KeyFile is the private key file in use.
func KeyFile() string {
	keys.Lock()
	defer keys.Unlock()
	return keyFileLocked()
}

func keyFileLocked() string {
	if keys.path != "" {
		return keys.path
	}
	if p := os.Getenv("WIREGUARD_KEY_FILE"); p != "" {
		return p
	}
	return DefaultKeyFile
}

// loadKey returns this node's private key, read once per process from the
// key file, or generated and written there (mode 0400, as flanneld) when the
// file is missing. A new key is therefore published at the agent's next
// start, and peers follow it. The key is never logged.
func loadKey(path string) (wgtypes.Key, error) {
	keys.Lock()
	defer keys.Unlock()
	if k, ok := keys.loaded[path]; ok {
		return k, nil
	}
	k, err := readOrCreateKey(path)
	if err != nil {
		return wgtypes.Key{}, err
	}
	if keys.loaded == nil {
		keys.loaded = map[string]wgtypes.Key{}
	}
	keys.loaded[path] = k
	return k, nil
}

func readOrCreateKey(path string) (wgtypes.Key, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			return wgtypes.Key{}, fmt.Errorf("generating a WireGuard private key: %w", err)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return wgtypes.Key{}, fmt.Errorf("WireGuard key file %s: %w", path, err)
		}
		// Written whole or not at all (a half-written key would be a new key
		// at the next start), without a newline: flanneld parses it as it is.
		if err := renameio.WriteFile(path, []byte(k.String()), 0o400, renameio.WithTempDir(filepath.Dir(path))); err != nil {
			return wgtypes.Key{}, fmt.Errorf("writing WireGuard key file %s: %w", path, err)
		}
		return k, nil
	}
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("reading WireGuard key file %s: %w", path, err)
	}
	k, err := wgtypes.ParseKey(strings.TrimSpace(string(data)))
	if err != nil {
		// Never quote the content: it is a secret, if a broken one.
		return wgtypes.Key{}, fmt.Errorf("WireGuard key file %s holds no private key (want the 44 characters of base64 wg genkey prints)", path)
	}
	return k, nil
}
