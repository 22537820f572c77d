package nodes

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/overlayd/overlayd/test/cluster"
)

// crashHelperEnv makes the test binary a cluster that is then killed: it
// starts one node, writes what it made (crashReport) to the file the
// variable names, and waits to be killed.
const crashHelperEnv = "OVERLAYD_NODES_CRASH_HELPER"

type crashReport struct {
	InitPid    int
	PIDNS      uint64
	CgroupRoot string
	Namespaces []string
	Dir        string
}

func TestMain(m *testing.M) {
	if report := os.Getenv(crashHelperEnv); report != "" {
		os.Exit(crashHelper(report))
	}
	os.Exit(m.Run())
}

func crashHelper(report string) int {
	c, err := Start(context.Background(), Options{Prefix: testPrefix, Nodes: 1})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	n := c.Nodes[0]
	data, _ := json.Marshal(crashReport{InitPid: n.initPid(), PIDNS: n.pidNS, CgroupRoot: n.CgroupRoot, Namespaces: c.Lab.NamespaceNames(), Dir: c.Dir})
	if err := os.WriteFile(report+".tmp", data, 0o644); err != nil || os.Rename(report+".tmp", report) != nil {
		return 1
	}
	select {} // until killed
}

// TestCrashedRunIsSwept kills a process running a cluster with SIGKILL, as
// a crashed or timed-out test run would be: every node process dies with
// it, and the next Start's Sweep removes the namespaces, cgroups and
// directory it left.
func TestCrashedRunIsSwept(t *testing.T) {
	report := filepath.Join(t.TempDir(), "report.json")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(os.Environ(), crashHelperEnv+"="+report)
	log := filepath.Join(t.TempDir(), "helper.log")
	f, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	var r crashReport
	cluster.Eventually(t, 90*time.Second, "the helper's cluster up", func() (bool, string) {
		select {
		case <-exited:
			out, _ := os.ReadFile(log)
			t.Fatalf("the helper exited: %s", out)
		default:
		}
		data, err := os.ReadFile(report)
		return err == nil && json.Unmarshal(data, &r) == nil, "no report yet"
	})
	cmd.Process.Kill()
	<-exited

	cluster.Eventually(t, 10*time.Second, "the node's processes gone with the crashed run", func() (bool, string) {
		left := processesInPIDNS(r.PIDNS)
		return len(left) == 0, fmt.Sprint(left)
	})
	removed, err := Sweep(testPrefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("swept: %s", strings.Join(removed, " "))
	for _, ns := range r.Namespaces {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			t.Errorf("namespace %s left after the sweep", ns)
		}
	}
	if cgs, _ := filepath.Glob(filepath.Join(cgroupMount, "*", r.CgroupRoot)); len(cgs) > 0 {
		t.Errorf("cgroups %v left after the sweep", cgs)
	}
	if _, err := os.Stat(r.Dir); err == nil {
		t.Errorf("%s left after the sweep", r.Dir)
	}
}
