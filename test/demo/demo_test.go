// Package demo runs `make demo` the way a new user would, from the
// repository root as root, and checks what it shows and that it leaves
// nothing behind: no network namespace, no process, no temporary file.
package demo

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/netip"
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

// TestDemo runs the demo without a terminal (it tears down right away) for
// vxlan and host-gw over IPv4, the default, and for vxlan dual-stack
// (FAMILY=dual), and expects the leases of every family, a full
// connectivity matrix of every family, exit status 0, and nothing left
// over.
func TestDemo(t *testing.T) {
	for _, tc := range []struct {
		name, backend string
		family        string // FAMILY; "" leaves the default (ipv4)
	}{
		{"vxlan", "vxlan", ""},
		{"host-gw", "host-gw", ""},
		{"vxlan dual-stack", "vxlan", "dual"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vars := []string{"BACKEND=" + tc.backend}
			family := "ipv4"
			if tc.family != "" {
				vars, family = append(vars, "FAMILY="+tc.family), tc.family
			}
			r := startDemo(t, vars, nil)
			code := r.wait(t)
			out := r.output()
			t.Logf("make demo %s:\n%s", strings.Join(vars, " "), out)
			if code != 0 {
				t.Fatalf("make demo %s exited %d:\n%s", strings.Join(vars, " "), code, out)
			}
			leases := checkLeases(t, out, tc.backend, family)
			checkFullMatrices(t, out, family, leases)
			checkTornDown(t, out)
			r.checkNothingLeft(t)
		})
	}
}

// TestDemoHoldsUntilInterrupt runs the demo as from a terminal (DEMO_HOLD=1,
// stdin open): it shows the cluster, keeps it up, and on Ctrl-C (SIGINT to
// the whole process group, as a terminal sends it) removes everything.
func TestDemoHoldsUntilInterrupt(t *testing.T) {
	r := startDemo(t, []string{"BACKEND=udp"}, []string{"DEMO_HOLD=1"})
	r.waitOutput(t, "Press Enter or Ctrl-C")
	out := r.output()
	leases := checkLeases(t, out, "udp", "ipv4")
	checkFullMatrices(t, out, "ipv4", leases)
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
	r := startDemo(t, []string{"BACKEND=vxlan"}, nil)
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

// TestDemoRejectsBadOptions: a typo in BACKEND or FAMILY gets a message
// listing the valid values, and udp with IPv6 (FAMILY=dual or ipv6, which
// overlayd refuses) one line naming FAMILY and what to use instead; in
// each case the demo exits non-zero at once and builds nothing.
func TestDemoRejectsBadOptions(t *testing.T) {
	for _, tc := range []struct {
		vars []string
		want string // the demo's one line
	}{
		{[]string{"BACKEND=vxlna"}, `demo: unknown BACKEND "vxlna": want one of vxlan, host-gw, udp (e.g. make demo BACKEND=udp)`},
		{[]string{"FAMILY=ipv5"}, `demo: unknown FAMILY "ipv5": want one of ipv4, dual, ipv6 (e.g. make demo FAMILY=dual)`},
		{[]string{"BACKEND=udp", "FAMILY=dual"}, "demo: FAMILY=dual: the udp backend carries IPv4 only; use BACKEND=vxlan or BACKEND=host-gw with FAMILY=dual"},
		{[]string{"BACKEND=udp", "FAMILY=ipv6"}, "demo: FAMILY=ipv6: the udp backend carries IPv4 only; use BACKEND=vxlan or BACKEND=host-gw with FAMILY=ipv6"},
	} {
		t.Run(strings.Join(tc.vars, " "), func(t *testing.T) {
			r := startDemo(t, tc.vars, nil)
			code := r.wait(t)
			out := r.output()
			if code == 0 {
				t.Fatalf("make demo %s succeeded:\n%s", strings.Join(tc.vars, " "), out)
			}
			var demoLines []string
			for _, line := range strings.Split(out, "\n") {
				if strings.HasPrefix(line, "demo:") {
					demoLines = append(demoLines, line)
				}
			}
			if len(demoLines) != 1 || demoLines[0] != tc.want {
				t.Errorf("the demo said %q, want the one line %q:\n%s", demoLines, tc.want, out)
			}
			if strings.Contains(out, "overlayd demo:") {
				t.Errorf("the demo started building a cluster:\n%s", out)
			}
			r.checkNothingLeft(t)
		})
	}
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

// startDemo starts `make demo` with the make variables vars (BACKEND=...,
// FAMILY=...) and the extra environment env.
func startDemo(t *testing.T, vars, env []string) *run {
	t.Helper()
	root := repoRoot(t)
	tmp, err := os.MkdirTemp("", "overlayd-demo-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	r := &run{tmp: tmp, out: &syncBuffer{}, before: demoLeftovers(t), done: make(chan struct{})}
	r.cmd = exec.Command("make", append([]string{"--no-print-directory", "demo"}, vars...)...)
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

// The demo's pod networks and underlay segment (hack/demo, test/lab).
var (
	podNetwork  = map[bool]netip.Prefix{false: netip.MustParsePrefix("10.244.0.0/16"), true: netip.MustParsePrefix("fd00:10:244::/56")}
	underlayNet = map[bool]netip.Prefix{false: netip.MustParsePrefix("198.18.0.0/24"), true: netip.MustParsePrefix("fd00:198:18::/64")}
)

// familiesOf lists the families of a FAMILY value, IPv4 first, as v6 flags.
func familiesOf(family string) []bool {
	return map[string][]bool{"ipv4": {false}, "dual": {false, true}, "ipv6": {true}}[family]
}

func familyName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// nodeLeases are the pod CIDRs the demo printed, by node and family (v6).
type nodeLeases map[string]map[bool]netip.Prefix

var nodeRE = regexp.MustCompile(`^node-\d+$`)

// checkLeases expects, in the lease table, one row per node and family of
// FAMILY: over IPv4 only the columns NODE, POD CIDR, PUBLIC IP, BACKEND,
// BACKEND DATA; with IPv6 a FAMILY column after NODE. Each node has its
// own pod CIDR in the family's pod network and its own public IP on the
// family's underlay segment, the backend asked for, and backend data. It
// returns the pod CIDRs.
func checkLeases(t *testing.T, out, backend, family string) nodeLeases {
	t.Helper()
	families := familiesOf(family)
	withFamily := slices.Contains(families, true) // the FAMILY column
	leases := nodeLeases{}
	rows := map[bool]int{}
	cidrs, ips := map[netip.Prefix]bool{}, map[netip.Addr]bool{}
	lines := strings.Split(out, "\n")
	start := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "Leases (") })
	if start < 0 {
		t.Fatalf("no lease table in the output:\n%s", out)
	}
	for _, line := range lines[start+1:] {
		f := strings.Fields(line)
		if len(f) == 0 {
			break // the table ends with a blank line
		}
		if !nodeRE.MatchString(f[0]) {
			continue // the header
		}
		v6 := false
		if withFamily {
			if len(f) != 6 || (f[1] != "IPv4" && f[1] != "IPv6") {
				t.Errorf("lease row %q: want NODE FAMILY POD-CIDR PUBLIC-IP BACKEND BACKEND-DATA", line)
				continue
			}
			v6 = f[1] == "IPv6"
			f = slices.Delete(f, 1, 2)
		} else if len(f) != 5 {
			t.Errorf("lease row %q: want NODE POD-CIDR PUBLIC-IP BACKEND BACKEND-DATA", line)
			continue
		}
		if !slices.Contains(families, v6) {
			t.Errorf("lease row for %s, a family FAMILY=%s has not: %q", familyName(v6), family, line)
			continue
		}
		rows[v6]++
		node, fam := f[0], familyName(v6)
		cidr, err := netip.ParsePrefix(f[1])
		if err != nil || cidr.Addr().Is6() != v6 || !podNetwork[v6].Contains(cidr.Addr()) || cidr.Bits() <= podNetwork[v6].Bits() {
			t.Errorf("%s pod CIDR of %s is %q, want a subnet of %s", fam, node, f[1], podNetwork[v6])
		}
		pub, err := netip.ParseAddr(f[2])
		if err != nil || !underlayNet[v6].Contains(pub) {
			t.Errorf("%s public IP of %s is %q, want an address in %s", fam, node, f[2], underlayNet[v6])
		}
		if f[3] != backend {
			t.Errorf("lease of %s has backend %s, want %s: %q", node, f[3], backend, line)
		}
		if backend == "vxlan" && !strings.Contains(f[4], `"VtepMAC":`) {
			t.Errorf("%s vxlan backend data of %s has no VtepMAC: %q", fam, node, f[4])
		}
		if leases[node] == nil {
			leases[node] = map[bool]netip.Prefix{}
		}
		leases[node][v6] = cidr
		cidrs[cidr], ips[pub] = true, true
	}
	want := nodes * len(families)
	if n := rows[false] + rows[true]; n != want || len(cidrs) != want || len(ips) != want || len(leases) != nodes {
		t.Errorf("want a lease row per node and family (%d nodes x %d) with distinct pod CIDRs and public IPs, got %d rows of %d nodes, %d CIDRs, %d IPs:\n%s",
			nodes, len(families), n, len(leases), len(cidrs), len(ips), out)
	}
	return leases
}

// matrixRE is a matrix row: the pod, its address of the family pinged and
// its node, then a cell per pod.
var matrixRE = regexp.MustCompile(`^\s*(pod-(\d+)[a-z]) \(([0-9a-f.:]+), (node-\d+)\)((?:\s+\S+)+)\s*$`)

// checkFullMatrices expects a connectivity matrix for every family of
// FAMILY, IPv4 first, and no other, each full (checkFullMatrix), and the
// summary naming every family.
func checkFullMatrices(t *testing.T, out, family string, leases nodeLeases) {
	t.Helper()
	lines := strings.Split(out, "\n")
	var headings []string
	for i, line := range lines {
		if strings.HasPrefix(line, "Connectivity") {
			headings = append(headings, line)
			v6 := strings.HasPrefix(line, "Connectivity over IPv6 ")
			checkFullMatrix(t, out, lines[i+1:], v6, leases)
		}
	}
	var want, over []string
	for _, v6 := range familiesOf(family) {
		want = append(want, fmt.Sprintf("Connectivity over %s (", familyName(v6)))
		over = append(over, "over "+familyName(v6))
	}
	if len(headings) != len(want) {
		t.Fatalf("matrices %q, want one for each of %q:\n%s", headings, want, out)
	}
	for i := range want {
		if !strings.HasPrefix(headings[i], want[i]) {
			t.Errorf("matrix %d is %q, want %q...", i+1, headings[i], want[i])
		}
	}
	total := nodes * pods * (nodes*pods - 1)
	if s := fmt.Sprintf("OK: all %d pod pairs reach each other %s across %d nodes", total, strings.Join(over, " and "), nodes); !strings.Contains(out, s) {
		t.Errorf("no summary %q:\n%s", s, out)
	}
}

// checkFullMatrix expects the matrix of nodes x pods pods over one family
// at the start of lines: the header names every pod, each pod's row is on
// its own node with an address of the family from that node's pod CIDR,
// and every cell off the diagonal is "ok".
func checkFullMatrix(t *testing.T, out string, lines []string, v6 bool, leases nodeLeases) {
	t.Helper()
	fam := familyName(v6)
	var want []string
	for n := 1; n <= nodes; n++ {
		for p := range pods {
			want = append(want, fmt.Sprintf("pod-%d%c", n, 'a'+p))
		}
	}
	if len(lines) < 1+len(want) || !strings.HasPrefix(strings.TrimSpace(lines[0]), `from \ to`) {
		t.Fatalf("%s matrix missing or cut short:\n%s", fam, out)
	}
	if got := strings.Fields(lines[0])[3:]; !slices.Equal(got, want) {
		t.Fatalf("%s matrix columns %v, want %v:\n%s", fam, got, want, out)
	}
	for i, name := range want {
		line := lines[1+i]
		m := matrixRE.FindStringSubmatch(line)
		if m == nil || m[1] != name {
			t.Fatalf("%s matrix row %d is %q, want pod %s:\n%s", fam, i, line, name, out)
		}
		if m[4] != "node-"+m[2] {
			t.Errorf("%s is on %s, want node-%s", name, m[4], m[2])
		}
		addr, err := netip.ParseAddr(m[3])
		if sub := leases[m[4]][v6]; err != nil || !sub.Contains(addr) {
			t.Errorf("%s's %s address is %q, want one of its node's %s pod CIDR %s", name, fam, m[3], fam, sub)
		}
		cells := strings.Fields(m[5])
		if len(cells) != len(want) {
			t.Fatalf("%s row %s has %d cells, want %d: %q", fam, name, len(cells), len(want), line)
		}
		for j, cell := range cells {
			wantCell := "ok"
			if i == j {
				wantCell = "-"
			}
			if cell != wantCell {
				t.Errorf("%s: %s -> %s: %q, want %q", fam, name, want[j], cell, wantCell)
			}
		}
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
		case "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKE_TERMOUT", "MAKE_TERMERR", "TMPDIR", "DEMO_HOLD", "BACKEND", "FAMILY":
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
