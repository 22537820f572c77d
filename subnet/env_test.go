package subnet

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/overlayd/overlayd/netconf"
)

func TestEnvContentMatchesFlanneld(t *testing.T) {
	cfg, err := netconf.Parse([]byte(`{"Network": "10.244.0.0/16"}`))
	if err != nil {
		t.Fatal(err)
	}
	lease := Lease{Subnet: netip.MustParsePrefix("10.244.3.0/24")}
	want := "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
	if got := string(EnvContent(cfg, lease, 1450, true)); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestEnvContentDualStack(t *testing.T) {
	cfg, err := netconf.Parse([]byte(`{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56"}`))
	if err != nil {
		t.Fatal(err)
	}
	lease := Lease{
		Subnet:     netip.MustParsePrefix("10.244.3.0/24"),
		IPv6Subnet: netip.MustParsePrefix("fd00:10:244:3::/64"),
	}
	want := "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n" +
		"FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n" +
		"FLANNEL_MTU=1400\nFLANNEL_IPMASQ=false\n"
	if got := string(EnvContent(cfg, lease, 1400, false)); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestWriteEnv(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "run", "flannel", "subnet.env")
	cfg, err := netconf.Parse([]byte(`{"Network": "10.244.0.0/16"}`))
	if err != nil {
		t.Fatal(err)
	}
	lease := Lease{Subnet: netip.MustParsePrefix("10.244.3.0/24")}
	if err := WriteEnv(path, cfg, lease, 1450, true); err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if before.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v, want 0644", before.Mode().Perm())
	}

	// Identical content leaves the file itself alone.
	if err := WriteEnv(path, cfg, lease, 1450, true); err != nil {
		t.Fatal(err)
	}
	same, _ := os.Stat(path)
	if !os.SameFile(before, same) {
		t.Fatal("identical content replaced the file")
	}

	// New content replaces it by rename: the old inode stays intact for a
	// reader that had it open, and no temporary file is left behind.
	if err := WriteEnv(path, cfg, lease, 1400, true); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(path)
	if os.SameFile(before, after) {
		t.Fatal("file rewritten in place, not replaced")
	}
	if got, _ := os.ReadFile(path); string(got) != string(EnvContent(cfg, lease, 1400, true)) {
		t.Fatalf("content %q", got)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want only subnet.env", len(entries))
	}
}
