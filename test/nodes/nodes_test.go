package nodes

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/overlayd/overlayd/test/cluster"
)

const testPrefix = "ovlN"

// hostMounts is the host's mount table, one mount point per line.
func hostMounts(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 {
			out = append(out, f[4])
		}
	}
	return out
}

// TestNodesRunPodsAndLeaveNothing brings up two kubelet nodes, runs a
// hostNetwork pod on each (no CNI needed) through the scheduler, reads its
// log through the API server (the egress path to the kubelet), and then
// checks that Close leaves no process, mount, cgroup, namespace or file,
// and that nothing the nodes mounted was ever visible on the host.
func TestNodesRunPodsAndLeaveNothing(t *testing.T) {
	ctx := context.Background()
	start := time.Now()
	c := New(t, Options{Prefix: testPrefix, Nodes: 2})
	t.Logf("up in %s", time.Since(start).Round(time.Millisecond))

	for _, n := range c.Nodes {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "hello-" + n.Name, Namespace: "default"},
			Spec: corev1.PodSpec{
				HostNetwork:  true,
				NodeSelector: map[string]string{"kubernetes.io/hostname": n.Name},
				Tolerations:  []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
				Containers: []corev1.Container{{
					Name: "hello", Image: BusyboxImage, ImagePullPolicy: corev1.PullNever,
					Command: []string{"sh", "-c", "echo hello from $(hostname); exec sleep 100000"},
				}},
				TerminationGracePeriodSeconds: new(int64),
			},
		}
		if _, err := c.Admin.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range c.Nodes {
		cluster.Eventually(t, 60*time.Second, "the pod on "+n.Name+" logging", func() (bool, string) {
			out, err := c.Kubectl(ctx, "logs", "hello-"+n.Name)
			if err != nil {
				return false, err.Error()
			}
			return strings.Contains(out, "hello from "+n.Name), out
		})
	}
	for _, m := range hostMounts(t) {
		if strings.HasPrefix(m, c.Dir) || strings.HasPrefix(m, "/var/lib/kubelet") || strings.HasPrefix(m, "/run/containerd") {
			t.Errorf("a node's mount %s is visible on the host", m)
		}
	}

	var inits []int
	var cgroups []string
	for _, n := range c.Nodes {
		inits = append(inits, n.initPid())
		cgroups = append(cgroups, filepath.Join(cgroupMount, "memory", n.CgroupRoot))
		if _, err := os.Stat(filepath.Join(cgroupMount, "memory", n.CgroupRoot, "kubepods")); err != nil {
			t.Errorf("the kubelet of %s made no kubepods cgroup under its root: %v", n.Name, err)
		}
	}
	namespaces := c.Lab.NamespaceNames()
	pidNS := []uint64{c.Nodes[0].pidNS, c.Nodes[1].pidNS}
	start = time.Now()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("down in %s", time.Since(start).Round(time.Millisecond))
	for _, ino := range pidNS {
		if left := processesInPIDNS(ino); len(left) > 0 {
			t.Errorf("processes %v left in a node's PID namespace", left)
		}
	}
	for _, pid := range inits {
		if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); err == nil && !isZombie(pid) {
			t.Errorf("node init %d still runs", pid)
		}
	}
	for _, cg := range cgroups {
		if _, err := os.Stat(cg); err == nil {
			t.Errorf("cgroup %s left", cg)
		}
	}
	for _, ns := range namespaces {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			t.Errorf("network namespace %s left", ns)
		}
	}
	if _, err := os.Stat(c.Dir); err == nil {
		t.Errorf("%s left", c.Dir)
	}
}
