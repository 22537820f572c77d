// Package deploy runs what the project ships on real kubelet nodes
// (test/nodes): Documentation/kube-overlayd.yml applied with kubectl as a
// user applies it, the operations an operator performs on it, and the
// Helm chart installed, upgraded and uninstalled with the real helm. One
// cluster of three nodes serves every step, in order.
package deploy

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/nodes"
)

const labPrefix = "ovlD"

// noLoss is what a rollout restart may lose, on vxlan and on udp (whose
// old agent hands the datapath over drained): nothing.
const noLoss = 0

func TestDeploy(t *testing.T) {
	start := time.Now()
	c := nodes.New(t, nodes.Options{Prefix: labPrefix, Nodes: 3, OverlaydImages: []string{shippedImage(t)}})
	ctx := context.Background()
	t.Logf("cluster up after %s", time.Since(start).Round(time.Millisecond))
	step := func(name string, fn func(t *testing.T)) {
		t0 := time.Now()
		if !t.Run(name, fn) {
			t.FailNow() // later steps build on this one
		}
		t.Logf("%s: %s", name, time.Since(t0).Round(time.Millisecond))
	}
	var pods []podHost

	step("shipped manifest applied with kubectl", func(t *testing.T) {
		kubectl(t, c, "apply", "-f", repoPath(overlaydManifest))
		waitRollout(t, c, "overlayd")
		kubectl(t, c, "wait", "--for=condition=Ready", "nodes", "--all", "--timeout=2m")
		for _, n := range c.Nodes {
			// The init containers installed the plugins and the conflist.
			for _, f := range []string{"opt/cni/bin/flannel", "opt/cni/bin/bridge", "opt/cni/bin/host-local", "opt/cni/bin/loopback", "opt/cni/bin/portmap", "etc/cni/net.d/10-overlayd.conflist"} {
				if _, err := os.Stat(filepath.Join(n.Root, f)); err != nil {
					t.Errorf("%s: /%s not installed: %v", n.Name, f, err)
				}
			}
			code, body, err := readyz(n)
			if err != nil || code != 200 {
				t.Errorf("%s: /readyz: %d %s %v", n.Name, code, body, err)
			}
		}
		// The pod's log, through the API server and the kubelet.
		list, err := c.Admin.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=overlayd"})
		if err != nil || len(list.Items) != len(c.Nodes) {
			t.Fatalf("overlayd pods: %d, %v", len(list.Items), err)
		}
		for _, p := range list.Items {
			log := kubectl(t, c, "-n", namespace, "logs", p.Name, "-c", "overlayd")
			for _, want := range []string{"overlayd-entrypoint: using iptables-", "starting overlayd", "lease acquired"} {
				if !strings.Contains(log, want) {
					t.Errorf("kubectl logs %s: no %q:\n%s", p.Name, want, log)
				}
			}
			if p.Spec.ServiceAccountName != "overlayd" {
				t.Errorf("pod %s runs as %q", p.Name, p.Spec.ServiceAccountName)
			}
		}
	})

	step("pods on different nodes reach each other", func(t *testing.T) {
		running := runningPods(t, c, "p")
		for _, p := range running {
			node, err := c.Admin.CoreV1().Nodes().Get(ctx, p.Spec.NodeName, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if cidr := netip.MustParsePrefix(node.Spec.PodCIDR); !cidr.Contains(netip.MustParseAddr(p.Status.PodIP)) {
				t.Errorf("pod %s has %s, outside %s's podCIDR %s", p.Name, p.Status.PodIP, node.Name, cidr)
			}
			if p.Spec.HostNetwork {
				t.Fatalf("pod %s is hostNetwork", p.Name)
			}
		}
		pods = podHosts(t, c, running)
		meshReachable(t, pods, 30*time.Second)
		// And as a user sees it: kubectl exec, through the kubelet.
		out := kubectl(t, c, "exec", running[0].Name, "--", "ping", "-c", "3", "-W", "5", running[1].Status.PodIP)
		if !strings.Contains(out, "3 packets received") {
			t.Errorf("kubectl exec ping: %s", out)
		}
	})

	step("rollout restart on vxlan loses nothing", func(t *testing.T) {
		rolloutRestartUnderPing(ctx, t, c, pods, "vxlan", noLoss)
	})

	step("ConfigMap edit switches the backend", func(t *testing.T) {
		ps := ring(t, pods)
		kubectl(t, c, "-n", namespace, "patch", "configmap", "kube-overlayd-cfg", "--type=merge", "-p",
			netConfPatch(t, map[string]any{"Network": "10.244.0.0/16", "Backend": map[string]any{"Type": "host-gw"}}))
		waitBackend(t, c, "host-gw", 2*time.Minute)
		stats := stopRing(t, ps)
		meshReachable(t, pods, 30*time.Second)
		for _, s := range stats {
			if s.Received == 0 {
				t.Errorf("no reply at all during the switch: %s", s)
			}
		}
		list, err := c.Admin.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=overlayd"})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range list.Items {
			// The running pods applied it: no restart.
			if log := kubectl(t, c, "-n", namespace, "logs", p.Name, "-c", "overlayd"); !strings.Contains(log, "applying new network configuration") {
				t.Errorf("%s did not log the new configuration", p.Name)
			}
			for _, s := range p.Status.ContainerStatuses {
				if s.RestartCount != 0 {
					t.Errorf("%s/%s restarted %d times", p.Name, s.Name, s.RestartCount)
				}
			}
		}
	})

	step("deleting the DaemonSet leaves the datapath in place", func(t *testing.T) {
		kubectl(t, c, "delete", "-f", repoPath(overlaydManifest), "--wait=true", "--timeout=2m")
		cluster.Eventually(t, 2*time.Minute, "namespace "+namespace+" gone", func() (bool, string) {
			_, err := c.Admin.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{})
			return apierrors.IsNotFound(err), "still there"
		})
		meshReachable(t, pods, 10*time.Second)
		for _, n := range c.Nodes {
			out, err := n.Exec(ctx, "ip", "route", "show", "proto", "79")
			if err != nil || strings.TrimSpace(out) == "" {
				t.Errorf("%s: overlayd's routes are gone after the DaemonSet: %q %v", n.Name, out, err)
			}
		}
	})

	step("helm install, upgrade to another backend, uninstall", func(t *testing.T) {
		chart := repoPath(chartPath)
		// As Documentation/kubernetes.md says: the namespace first, labelled
		// for the privileged Pod Security level.
		kubectl(t, c, "create", "namespace", namespace)
		kubectl(t, c, "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=privileged")
		helm(t, c, "install", "overlayd", chart, "--namespace", namespace, "--wait", "--timeout=4m")
		waitBackend(t, c, "vxlan", 2*time.Minute)
		meshReachable(t, pods, 30*time.Second)

		ps := ring(t, pods)
		helm(t, c, "upgrade", "overlayd", chart, "--namespace", namespace, "--set", "netConf.Backend.Type=udp", "--wait", "--timeout=4m")
		waitBackend(t, c, "udp", 2*time.Minute)
		stopRing(t, ps)
		meshReachable(t, pods, 30*time.Second)
		if out := helm(t, c, "history", "overlayd", "--namespace", namespace); !strings.Contains(out, "upgrade-complete") && !strings.Contains(out, "Upgrade complete") {
			t.Errorf("helm history: %s", out)
		}

		// The userspace datapath is handed from the old pod to the new one.
		rolloutRestartUnderPing(ctx, t, c, pods, "udp", noLoss)

		helm(t, c, "uninstall", "overlayd", "--namespace", namespace, "--wait", "--timeout=4m")
		cluster.Eventually(t, 2*time.Minute, "no object of the release left", func() (bool, string) {
			left := releaseObjects(ctx, t, c)
			return len(left) == 0, strings.Join(left, ", ")
		})
		if out := helm(t, c, "list", "--all-namespaces", "-q"); strings.TrimSpace(out) != "" {
			t.Errorf("helm list after uninstall: %s", out)
		}
		kubectl(t, c, "delete", "namespace", namespace, "--timeout=2m")
	})

	step("overlayd --uninstall removes the datapath", func(t *testing.T) {
		for _, n := range c.Nodes {
			pod := uninstallPod(shippedImage(t), n.Name)
			if _, err := c.Admin.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		for _, n := range c.Nodes {
			name := "overlayd-uninstall-" + n.Name
			cluster.Eventually(t, 90*time.Second, name+" succeeding", func() (bool, string) {
				p, err := c.Admin.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
				if err != nil {
					return false, err.Error()
				}
				if p.Status.Phase == corev1.PodFailed {
					t.Fatalf("%s failed: %s", name, kubectl(t, c, "logs", name))
				}
				return p.Status.Phase == corev1.PodSucceeded, string(p.Status.Phase)
			})
			if log := kubectl(t, c, "logs", name); !strings.Contains(log, "removed overlayd's datapath") {
				t.Errorf("%s: %s", name, log)
			}
			out, err := n.Exec(ctx, "ip", "route", "show", "proto", "79")
			if err != nil || strings.TrimSpace(out) != "" {
				t.Errorf("%s: overlayd's routes after --uninstall: %q %v", n.Name, out, err)
			}
			links, _ := n.Exec(ctx, "ip", "-d", "link", "show")
			if strings.Contains(links, "alias overlayd") {
				t.Errorf("%s: overlayd's devices after --uninstall:\n%s", n.Name, links)
			}
		}
	})
	t.Logf("all steps: %s", time.Since(start).Round(time.Millisecond))
}

// releaseObjects lists what of the chart is still in the cluster.
func releaseObjects(ctx context.Context, t *testing.T, c *nodes.Cluster) []string {
	var left []string
	for _, kind := range []string{"daemonsets", "configmaps", "serviceaccounts", "roles", "rolebindings", "services", "secrets"} {
		out, err := c.Kubectl(ctx, "-n", namespace, "get", kind, "-o", "name", "--ignore-not-found")
		if err != nil {
			left = append(left, err.Error())
		}
		for _, name := range strings.Fields(out) {
			// The namespace's own, not the release's.
			if name != "configmap/kube-root-ca.crt" && name != "serviceaccount/default" {
				left = append(left, namespace+" "+name)
			}
		}
	}
	if _, err := c.Admin.RbacV1().ClusterRoles().Get(ctx, "overlayd", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		left = append(left, "ClusterRole overlayd")
	}
	if _, err := c.Admin.RbacV1().ClusterRoleBindings().Get(ctx, "overlayd", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		left = append(left, "ClusterRoleBinding overlayd")
	}
	if _, err := c.Admin.RbacV1().Roles("default").Get(ctx, "overlayd-events", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		left = append(left, "Role default/overlayd-events")
	}
	if _, err := c.Admin.RbacV1().RoleBindings("default").Get(ctx, "overlayd-events", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		left = append(left, "RoleBinding default/overlayd-events")
	}
	return left
}

// uninstallPod runs `overlayd --uninstall` on a node from the image, as an
// operator removing overlayd would (Documentation/kubernetes.md).
func uninstallPod(image, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "overlayd-uninstall-" + node, Namespace: "default"},
		Spec: corev1.PodSpec{
			NodeName:      node,
			HostNetwork:   true,
			HostPID:       true,
			RestartPolicy: corev1.RestartPolicyNever,
			Tolerations:   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{
				Name: "uninstall", Image: image, ImagePullPolicy: corev1.PullIfNotPresent,
				Args: []string{"--uninstall"},
				SecurityContext: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{
					Add: []corev1.Capability{"NET_ADMIN", "NET_RAW"}}},
				VolumeMounts: []corev1.VolumeMount{{Name: "run-flannel", MountPath: "/run/flannel"}, {Name: "xtables-lock", MountPath: "/run/xtables.lock"}},
			}},
			Volumes: []corev1.Volume{
				{Name: "run-flannel", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/run/flannel"}}},
				{Name: "xtables-lock", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/run/xtables.lock"}}},
			},
		},
	}
}
