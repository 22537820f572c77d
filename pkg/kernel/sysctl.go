package kernel

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
)

// ensureSysctl sets the network sysctl name (e.g.
// "net/ipv6/conf/overlay-v6.1/accept_ra") to value in the reconciler's
// namespace if it is not that already, and reports whether it changed it.
// /proc/sys/net is the namespace of the thread that opens it, hence the
// namespace thread.
func (r *Reconciler) ensureSysctl(name, value string) (bool, error) {
	path := filepath.Join("/proc/sys", name)
	changed := false
	err := InNamespace(r.ns, func() error {
		cur, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if string(bytes.TrimSpace(cur)) == value {
			return nil
		}
		changed = true
		return os.WriteFile(path, []byte(value), 0o644)
	})
	if err != nil {
		return false, fmt.Errorf("sysctl %s: %w", name, err)
	}
	return changed, nil
}
