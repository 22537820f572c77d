// Package netnstest gives a test network namespaces of its own, removed when
// the test ends, also when it fails. Tests never touch the host's own
// namespace; names carry the caller's prefix and the process id, so parallel
// packages and runs never collide.
package netnstest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netns"
)

var seq atomic.Int32

// New creates the namespace <prefix><pid>-<n>-<role> and returns its name
// and an open handle; both are released when the test ends.
func New(t testing.TB, prefix, role string) (string, netns.NsHandle) {
	t.Helper()
	name := fmt.Sprintf("%s%d-%d-%s", prefix, os.Getpid(), seq.Add(1), role)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("creating netns %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("deleting netns %s: %v: %s", name, err, out)
		}
	})
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("opening netns %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close() })
	return name, h
}

// IP runs `ip -n <name> args...` and returns its output; a failure fails
// the test.
func IP(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
