package procs

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/overlayd/overlayd/test/netnstest"
)

// startNamed starts a process whose name (comm) is name, in the network
// namespace ns ("" for this one), and stops it when the test ends.
func startNamed(t *testing.T, name, ns string) int {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	if err := os.Symlink("/bin/sleep", bin); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	argv := []string{bin, "60"}
	if ns != "" {
		argv = append([]string{"ip", "netns", "exec", ns}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	// Until exec has happened, the process is still called sleep's parent.
	deadline := time.Now().Add(5 * time.Second)
	for {
		comm, _ := os.ReadFile(filepath.Join("/proc", itoa(cmd.Process.Pid), "comm"))
		if string(comm) == name+"\n" {
			return cmd.Process.Pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d never became %s (comm %q)", cmd.Process.Pid, name, comm)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// Find finds a process of the name in this network namespace, and none
// in another or of another name.
func TestFind(t *testing.T) {
	const name = "ovl-find-test"
	if pid, err := Find(name); err != nil || pid != 0 {
		t.Fatalf("before: pid %d, %v", pid, err)
	}
	other, _ := netnstest.New(t, "ovlF", "other")
	startNamed(t, name, other)
	startNamed(t, "ovl-other-name", "")
	if pid, err := Find(name); err != nil || pid != 0 {
		t.Fatalf("a process in another namespace, or of another name, counted: pid %d, %v", pid, err)
	}
	want := startNamed(t, name, "")
	if pid, err := Find(name); err != nil || pid != want {
		t.Fatalf("Find(%q) = %d, %v; want %d", name, pid, err, want)
	}
}
