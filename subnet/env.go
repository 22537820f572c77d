package subnet

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"

	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/pkg/ip"
)

// EnvContent renders subnet.env exactly as flanneld writes it, which is what
// the CNI flannel plugin parses: the network, the node's subnet written with
// its first host address (the bridge's), the MTU and whether to masquerade.
func EnvContent(cfg *netconf.Config, lease Lease, mtu int, ipMasq bool) []byte {
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

// WriteEnv writes subnet.env so that a reader (the CNI plugin, run at any
// moment) sees the old or the new file, never a partial one. An identical
// file is left alone, so its watchers see no change.
func WriteEnv(path string, cfg *netconf.Config, lease Lease, mtu int, ipMasq bool) error {
	content := EnvContent(cfg, lease, mtu, ipMasq)
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, content) {
		return nil
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	if err := renameio.WriteFile(path, content, 0o644, renameio.WithTempDir(dir)); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
