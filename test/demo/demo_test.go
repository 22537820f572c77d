// Package demo runs `make demo` the way a new user would, from the
// repository root as root, and checks what it shows and that it leaves
// nothing behind: no network namespace, no process, no temporary file.
package demo

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	nsPrefix = "ovldemo-" // every namespace the demo creates starts with this
	lockDir  = "/run/overlayd-lab"
	nodes    = 3
	pods     = 2
)

// TestDemo runs the demo for each backend without a terminal (it tears
// down right away) and expects a full connectivity matrix, exit status 0,
// and nothing left over.
func TestDemo(t *testing.T) {
	for _, backend := range []string{"vxlan", "host-gw"} {
		t.Run(backend, func(t *testing.T) {
			r := startDemo(t, backend, nil)
			code := r.wait(t)
			out := r.output()
			t.Logf("make demo BACKEND=%s:\n%s", backend, out)
			if code != 0 {
				t.Fatalf("make demo BACKEND=%s exited %d:\n%s", backend, code, out)
			}
			checkLeases(t, out, backend)
			checkFullMatrix(t, out)
			checkTornDown(t, out)
			r.checkNothingLeft(t)
		})
	}
}

// TestDemoHoldsUntilInterrupt runs the demo as from a terminal (DEMO_HOLD=1,
// stdin open): it shows the cluster, keeps it up, and on Ctrl-C (SIGINT to
// the whole process group, as a terminal sends it) removes everything.
func TestDemoHoldsUntilInterrupt(t *testing.T) {
	r := startDemo(t, "udp", []string{"DEMO_HOLD=1"})
	r.waitOutput(t, "Press Enter or Ctrl-C")
	out := r.output()
	checkLeases(t, out, "udp")
	checkFullMatrix(t, out)
	// Still up while holding: the namespaces are there.
	var ns []string
	for _, name := range r.newNamespaces(t) {
		if strings.HasPrefix(name, "netns ") {
			ns = append(ns, name)
		}
	}
	if len(ns) != nodes+nodes*pods+2 {
		t.Fatalf("while holding: %d demo namespaces, want %d (nodes, pods, underlay, gateway): %v", len(ns), nodes+nodes*pods+2, ns)
	}
	r.signalGroup(t, syscall.SIGINT)
	r.wait(t) // make reports the interrupt with a non-zero status
	out = r.output()
	t.Logf("make demo BACKEND=udp DEMO_HOLD=1, then SIGINT:\n%s", out)
	if !strings.Contains(out, "interrupt signal received") {
		t.Errorf("no word of the interrupt in the output:\n%s", out)
	}
	checkTornDown(t, out)
	r.checkNothingLeft(t)
}

// TestDemoTerminatedWhileStarting sends SIGTERM to the process group while
// the nodes are coming up: the demo stops where it is and removes what it
// had built.
func TestDemoTerminatedWhileStarting(t *testing.T) {
	r := startDemo(t, "vxlan", nil)
	r.waitOutput(t, "Node objects;")
	r.signalGroup(t, syscall.SIGTERM)
	r.wait(t)
	out := r.output()
	t.Logf("make demo, SIGTERM while starting:\n%s", out)
	if strings.Contains(out, "Connectivity") {
		t.Fatalf("the demo went on to the matrix after SIGTERM:\n%s", out)
	}
	if !strings.Contains(out, "terminated signal received: stopping") {
		t.Errorf("no word of SIGTERM in the output:\n%s", out)
	}
	checkTornDown(t, out)
	r.checkNothingLeft(t)
}

// TestDemoRejectsUnknownBackend: a typo in BACKEND gets a message listing
// the valid values, and nothing is built.
func TestDemoRejectsUnknownBackend(t *testing.T) {
	r := startDemo(t, "vxlna", nil)
	code := r.wait(t)
	out := r.output()
	if code == 0 {
		t.Fatalf("make demo BACKEND=vxlna succeeded:\n%s", out)
	}
	if !strings.Contains(out, `unknown BACKEND "vxlna": want one of vxlan, host-gw, udp`) {
		t.Errorf("no clear message about the bad BACKEND:\n%s", out)
	}
	r.checkNothingLeft(t)
}

// run is one `make demo` in its own process group, with its own TMPDIR so
// that every temporary file it makes can be found afterwards.
type run struct {
	cmd    *exec.Cmd
	tmp    string
	out    *syncBuffer
	before []string // demo namespaces and lock files that existed before
	done   chan struct{}
}

func startDemo(t *testing.T, backend string, env []string) *run {
	t.Helper()
	root := repoRoot(t)
	tmp, err := os.MkdirTemp("", "overlayd-demo-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	r := &run{tmp: tmp, out: &syncBuffer{}, before: demoLeftovers(t), done: make(chan struct{})}
	r.cmd = exec.Command("make", "--no-print-directory", "demo", "BACKEND="+backend)
	r.cmd.Dir = root
	r.cmd.Env = append(append(cleanEnv(), "TMPDIR="+tmp), env...)
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	// A pipe that stays open: stdin is not a terminal, and with DEMO_HOLD=1
	// the demo waits on it.
	stdin, err := r.cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("starting make demo: %v", err)
	}
	go func() {
		r.cmd.Wait()
		close(r.done)
	}()
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-r.done:
		default: // a failed test left it running: stop it like Ctrl-C would
			syscall.Kill(-r.cmd.Process.Pid, syscall.SIGINT)
			select {
			case <-r.done:
			case <-time.After(30 * time.Second):
				syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
				<-r.done
			}
		}
	})
	return r
}

// runTimeout bounds one run, builds by make included.
const runTimeout = 10 * time.Minute

func (r *run) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(runTimeout):
		t.Fatalf("make demo still running after %s:\n%s", runTimeout, r.output())
	}
	return r.cmd.ProcessState.ExitCode()
}

// waitOutput waits until the output contains s.
func (r *run) waitOutput(t *testing.T, s string) {
	t.Helper()
	deadline := time.After(runTimeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(r.output(), s) {
		select {
		case <-r.done:
			if strings.Contains(r.output(), s) {
				return
			}
			t.Fatalf("make demo exited (%v) before printing %q:\n%s", r.cmd.ProcessState, s, r.output())
		case <-deadline:
			t.Fatalf("make demo did not print %q within %s:\n%s", s, runTimeout, r.output())
		case <-tick.C:
		}
	}
}

func (r *run) signalGroup(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(-r.cmd.Process.Pid, sig); err != nil {
		t.Fatalf("sending %v to make's process group: %v", sig, err)
	}
}

func (r *run) output() string { return r.out.String() }

// checkNothingLeft looks, independently of what the demo says, for
// anything it may have left: a namespace or lab lock file that was not
// there before, a file in its TMPDIR, a process that mentions its TMPDIR
// (every process it starts has a path in TMPDIR on its command line).
func (r *run) checkNothingLeft(t *testing.T) {
	t.Helper()
	if left := r.newNamespaces(t); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	entries, err := os.ReadDir(r.tmp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("left behind in TMPDIR: %s", filepath.Join(r.tmp, e.Name()))
	}
	for _, p := range processesMentioning(r.tmp) {
		t.Errorf("process left running: %s", p)
	}
}

// newNamespaces returns the demo namespaces and lock files that did not
// exist before the run.
func (r *run) newNamespaces(t *testing.T) []string {
	t.Helper()
	var fresh []string
	for _, name := range demoLeftovers(t) {
		if !slices.Contains(r.before, name) {
			fresh = append(fresh, name)
		}
	}
	return fresh
}

// demoLeftovers lists network namespaces (as `ip netns list` shows them)
// and lab lock files with the demo's prefix.
func demoLeftovers(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command(ipBinary(), "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], nsPrefix) {
			names = append(names, "netns "+f[0])
		}
	}
	locks, _ := os.ReadDir(lockDir)
	for _, e := range locks {
		if strings.HasPrefix(e.Name(), nsPrefix) {
			names = append(names, "lock "+filepath.Join(lockDir, e.Name()))
		}
	}
	return names
}

// processesMentioning returns "pid: cmdline" of live processes whose
// command line contains s.
func processesMentioning(s string) []string {
	var found []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(data, []byte(s)) {
			continue
		}
		if state, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); isZombie(state) {
			continue
		}
		found = append(found, fmt.Sprintf("%d: %s", pid, bytes.ReplaceAll(bytes.TrimRight(data, "\x00"), []byte{0}, []byte{' '})))
	}
	return found
}

func isZombie(stat []byte) bool {
	i := bytes.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}

var (
	leaseRowRE = regexp.MustCompile(`^\s*(node-\d+)\s+(10\.244\.\d+\.0/24)\s+(198\.18\.0\.\d+)\s+(\S+)\s+(\S+)\s*$`)
	matrixRE   = regexp.MustCompile(`^\s*(pod-(\d)[a-z]) \((10\.244\.\d+\.\d+), (node-\d+)\)((?:\s+\S+)+)\s*$`)
)

// checkLeases expects one lease row per node, each with its own pod CIDR
// and public IP and the backend asked for.
func checkLeases(t *testing.T, out, backend string) {
	t.Helper()
	cidrs, ips := map[string]bool{}, map[string]bool{}
	rows := 0
	for _, line := range strings.Split(out, "\n") {
		m := leaseRowRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		rows++
		if m[4] != backend {
			t.Errorf("lease of %s has backend %s, want %s: %q", m[1], m[4], backend, line)
		}
		cidrs[m[2]], ips[m[3]] = true, true
	}
	if rows != nodes || len(cidrs) != nodes || len(ips) != nodes {
		t.Errorf("want %d lease rows with distinct pod CIDRs and public IPs, got %d rows, %d CIDRs, %d IPs:\n%s",
			nodes, rows, len(cidrs), len(ips), out)
	}
}

// checkFullMatrix expects the matrix of nodes x pods pods: the header
// names every pod, each pod's row is on its own node with an address from
// that node's pod CIDR, and every cell off the diagonal is "ok".
func checkFullMatrix(t *testing.T, out string) {
	t.Helper()
	var want []string
	for n := 1; n <= nodes; n++ {
		for p := range pods {
			want = append(want, fmt.Sprintf("pod-%d%c", n, 'a'+p))
		}
	}
	lines := strings.Split(out, "\n")
	header := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(strings.TrimSpace(l), `from \ to`) })
	if header < 0 {
		t.Fatalf("no connectivity matrix in the output:\n%s", out)
	}
	if got := strings.Fields(lines[header])[3:]; !slices.Equal(got, want) {
		t.Fatalf("matrix columns %v, want %v:\n%s", got, want, out)
	}
	if len(lines) < header+1+len(want) {
		t.Fatalf("matrix cut short:\n%s", out)
	}
	for i, name := range want {
		line := lines[header+1+i]
		m := matrixRE.FindStringSubmatch(line)
		if m == nil || m[1] != name {
			t.Fatalf("matrix row %d is %q, want pod %s:\n%s", i, line, name, out)
		}
		if m[4] != "node-"+m[2] {
			t.Errorf("%s is on %s, want node-%s", name, m[4], m[2])
		}
		cells := strings.Fields(m[5])
		if len(cells) != len(want) {
			t.Fatalf("row %s has %d cells, want %d: %q", name, len(cells), len(want), line)
		}
		for j, cell := range cells {
			wantCell := "ok"
			if i == j {
				wantCell = "-"
			}
			if cell != wantCell {
				t.Errorf("%s -> %s: %q, want %q", name, want[j], cell, wantCell)
			}
		}
	}
	total := len(want) * (len(want) - 1)
	if !strings.Contains(out, fmt.Sprintf("OK: all %d pod pairs reach each other", total)) {
		t.Errorf("no summary of %d reachable pairs:\n%s", total, out)
	}
}

// checkTornDown expects the demo's own report that it removed everything.
func checkTornDown(t *testing.T, out string) {
	t.Helper()
	if !regexp.MustCompile(`Tearing down: \d+ namespaces, \d+ processes and \d+ directories removed in [0-9.]+s; nothing left\.`).MatchString(out) {
		t.Errorf("the demo did not report a complete teardown:\n%s", out)
	}
}

// repoRoot is the directory holding the main module's go.mod.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil {
			first, _, _ := bufio.NewReader(bytes.NewReader(data)).ReadLine()
			if string(first) == "module github.com/overlayd/overlayd" {
				return dir
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("cannot find the repository root above the working directory")
		}
		dir = parent
	}
}

// cleanEnv is this process's environment without what an enclosing make
// (`make test`) passes down, so the demo runs as from a fresh shell.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKE_TERMOUT", "MAKE_TERMERR", "TMPDIR", "DEMO_HOLD", "BACKEND":
			continue
		}
		env = append(env, kv)
	}
	return env
}

func ipBinary() string {
	if p, err := exec.LookPath("ip"); err == nil {
		return p
	}
	return "/usr/sbin/ip"
}

// syncBuffer collects output written by the child while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

var _ io.Writer = (*syncBuffer)(nil)
