// Package devcluster tests `make dev-cluster` as a developer uses it: up,
// the shipped manifest applied with kubectl, two pods on different nodes
// pinging each other through kubectl exec, `make dev-cluster-down`, and
// nothing left behind.
package devcluster

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/controlplane"
)

const repoRoot = "../.."

// make runs a make target of the repository, as a developer would.
func make(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("make", args...)
	cmd.Dir = repoRoot
	// Not the jobserver of a `make test` this runs under.
	cmd.Env = withoutMake(os.Environ())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

func withoutMake(env []string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "MAKEFLAGS=") && !strings.HasPrefix(kv, "MFLAGS=") && !strings.HasPrefix(kv, "MAKELEVEL=") {
			out = append(out, kv)
		}
	}
	return out
}

var kubeconfigRE = regexp.MustCompile(`export KUBECONFIG=(\S+)`)

func TestDevCluster(t *testing.T) {
	bins, err := controlplane.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	kubectlBin := filepath.Join(bins, "kubectl")
	dir := filepath.Join(t.TempDir(), "dev-cluster")
	down := func() string { return make(t, "-s", "dev-cluster-down", "DEV_CLUSTER_DIR="+dir) }
	t.Cleanup(func() {
		if _, err := os.Stat(dir); err == nil {
			down()
		}
	})

	start := time.Now()
	out := make(t, "-s", "dev-cluster", "DEV_CLUSTER_DIR="+dir)
	m := kubeconfigRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("make dev-cluster printed no kubeconfig:\n%s", out)
	}
	if !strings.Contains(out, "apiVersion: v1") || !strings.Contains(out, "clusters:") {
		t.Errorf("make dev-cluster did not print the kubeconfig:\n%s", out)
	}
	t.Logf("make dev-cluster: %s", time.Since(start).Round(time.Millisecond))
	kubeconfig := m[1]
	kubectl := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(kubectlBin, args...)
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("kubectl %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
		}
		return stdout.String()
	}

	kubectl("apply", "-f", "Documentation/kube-overlayd.yml")
	kubectl("-n", "kube-overlayd", "rollout", "status", "daemonset/overlayd", "--timeout=3m")
	kubectl("wait", "--for=condition=Ready", "nodes", "--all", "--timeout=2m")
	pods := `apiVersion: v1
kind: Pod
metadata: {name: a}
spec:
  nodeSelector: {kubernetes.io/hostname: node-1}
  terminationGracePeriodSeconds: 0
  containers: [{name: busybox, image: localhost/busybox:1.35, command: [sleep, "100000"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b}
spec:
  nodeSelector: {kubernetes.io/hostname: node-2}
  terminationGracePeriodSeconds: 0
  containers: [{name: busybox, image: localhost/busybox:1.35, command: [sleep, "100000"]}]
`
	f := filepath.Join(t.TempDir(), "pods.yaml")
	if err := os.WriteFile(f, []byte(pods), 0o644); err != nil {
		t.Fatal(err)
	}
	kubectl("apply", "-f", f)
	kubectl("wait", "--for=condition=Ready", "pod/a", "pod/b", "--timeout=2m")
	ipB := strings.TrimSpace(kubectl("get", "pod", "b", "-o", "jsonpath={.status.podIP}"))
	ipA := strings.TrimSpace(kubectl("get", "pod", "a", "-o", "jsonpath={.status.podIP}"))
	for _, c := range []struct{ from, to string }{{"a", ipB}, {"b", ipA}} {
		cluster.Eventually(t, 30*time.Second, "pod "+c.from+" pinging "+c.to, func() (bool, string) {
			cmd := exec.Command(kubectlBin, "exec", c.from, "--", "ping", "-c", "3", "-W", "3", c.to)
			cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
			out, err := cmd.CombinedOutput()
			return err == nil && strings.Contains(string(out), "3 packets received"), string(out)
		})
	}

	pid, err := os.ReadFile(filepath.Join(dir, "pid"))
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	down()
	t.Logf("make dev-cluster-down: %s", time.Since(start).Round(time.Millisecond))
	// A zombie has ended (what reaps it is no business of the cluster's).
	if stat, err := os.ReadFile("/proc/" + strings.TrimSpace(string(pid)) + "/stat"); err == nil && !strings.Contains(string(stat), ") Z ") {
		t.Errorf("the dev cluster (pid %s) still runs: %s", pid, stat)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("%s left", dir)
	}
	netnses, _ := os.ReadDir("/run/netns")
	for _, e := range netnses {
		if strings.HasPrefix(e.Name(), "ovlDev-") {
			t.Errorf("network namespace %s left", e.Name())
		}
	}
	cgroups, _ := filepath.Glob("/sys/fs/cgroup/*/ovlDev-*")
	for _, cg := range cgroups {
		t.Errorf("cgroup %s left", cg)
	}
}
