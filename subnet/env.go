package subnet

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"github.com/overlayd/overlayd/pkg/ip"
)

// EnvContent renders subnet.env exactly as flanneld writes it, which is what
// the CNI flannel plugin parses: the network, the node's subnet written with
// its first host address (the bridge's), the MTU and whether to masquerade.
func EnvContent(cfg *Config, lease Lease, mtu int, ipMasq bool) []byte {
	var b bytes.Buffer
	if cfg.EnableIPv4 {
		fmt.Fprintf(&b, "FLANNEL_NETWORK=%s\n", cfg.Network)
		fmt.Fprintf(&b, "FLANNEL_SUBNET=%s/%d\n", ip.FirstHost(lease.Subnet), lease.Subnet.Bits())
	}
	if cfg.EnableIPv6 {
		fmt.Fprintf(&b, "FLANNEL_IPV6_NETWORK=%s\n", cfg.IPv6Network)
		fmt.Fprintf(&b, "FLANNEL_IPV6_SUBNET=%s/%d\n", ip.FirstHost(lease.IPv6Subnet), lease.IPv6Subnet.Bits())
	}
	fmt.Fprintf(&b, "FLANNEL_MTU=%d\n", mtu)
	fmt.Fprintf(&b, "FLANNEL_IPMASQ=%t\n", ipMasq)
	return b.Bytes()
}

// WriteFileAtomic replaces path with content so that a reader sees either the
// old or the new file, never a partial one: write a temporary file in the same
// directory, sync it, rename it over path. An identical file is left alone.
func WriteFileAtomic(path string, content []byte, perm os.FileMode) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, content) {
		return nil
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op once renamed
	if _, err := tmp.Write(content); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("syncing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replacing %s: %w", path, err)
	}
	return nil
}
