package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/controlplane"
	"github.com/overlayd/overlayd/test/lab"
	"github.com/overlayd/overlayd/test/nodes"
)

const (
	repoRoot         = "../.."
	overlaydManifest = "Documentation/kube-overlayd.yml"
	chartPath        = "Documentation/chart/overlayd"
	namespace        = "kube-overlayd"
)

func repoPath(p string) string { return filepath.Join(repoRoot, filepath.FromSlash(p)) }

// shippedImage is the image the shipped DaemonSet runs: the harness
// imports the image built from this tree under that name, so the manifest
// runs unchanged.
func shippedImage(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(repoPath(overlaydManifest))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := controlplane.DecodeManifest(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if o.GetKind() == "DaemonSet" && o.GetName() == "overlayd" {
			cs, _, _ := unstructuredSlice(o.Object, "spec", "template", "spec", "containers")
			if len(cs) > 0 {
				if img, ok := cs[0].(map[string]any)["image"].(string); ok {
					return img
				}
			}
		}
	}
	t.Fatalf("%s: no overlayd DaemonSet image", overlaydManifest)
	return ""
}

func unstructuredSlice(obj map[string]any, path ...string) ([]any, bool, error) {
	var v any = obj
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false, nil
		}
		v = m[p]
	}
	s, ok := v.([]any)
	return s, ok, nil
}

// kubectl runs kubectl and fails the test on error.
func kubectl(t *testing.T, c *nodes.Cluster, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := c.Kubectl(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func helm(t *testing.T, c *nodes.Cluster, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := c.Helm(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// testPod is an ordinary pod (not hostNetwork) on a node, attached by the
// kubelet through the CNI configuration installed on the node.
func testPod(name, node string) *corev1.Pod {
	zero := int64(0)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"app": "deploy-test"}},
		Spec: corev1.PodSpec{
			NodeSelector:                  map[string]string{"kubernetes.io/hostname": node},
			TerminationGracePeriodSeconds: &zero,
			Containers: []corev1.Container{{
				Name: "busybox", Image: nodes.BusyboxImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"sleep", "100000"},
			}},
		},
	}
}

// runningPods creates one test pod per node and waits until they run.
func runningPods(t *testing.T, c *nodes.Cluster, prefix string) []*corev1.Pod {
	t.Helper()
	ctx := context.Background()
	var out []*corev1.Pod
	for _, n := range c.Nodes {
		if _, err := c.Admin.CoreV1().Pods("default").Create(ctx, testPod(prefix+"-"+n.Name, n.Name), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range c.Nodes {
		name := prefix + "-" + n.Name
		var pod *corev1.Pod
		cluster.Eventually(t, 90*time.Second, "pod "+name+" running", func() (bool, string) {
			p, err := c.Admin.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			pod = p
			return p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "", fmt.Sprintf("phase %s, %s", p.Status.Phase, podConditions(p))
		})
		out = append(out, pod)
	}
	return out
}

func podConditions(p *corev1.Pod) string {
	var b strings.Builder
	for _, s := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
		if w := s.State.Waiting; w != nil {
			fmt.Fprintf(&b, "%s waiting: %s %s; ", s.Name, w.Reason, w.Message)
		}
		if term := s.State.Terminated; term != nil {
			fmt.Fprintf(&b, "%s terminated: %s %d; ", s.Name, term.Reason, term.ExitCode)
		}
	}
	for _, cond := range p.Status.Conditions {
		if cond.Status != corev1.ConditionTrue {
			fmt.Fprintf(&b, "%s=%s %s; ", cond.Type, cond.Status, cond.Message)
		}
	}
	return b.String()
}

// podHost is a running pod's network namespace and address.
type podHost struct {
	name string
	host *lab.Host
	ip   netip.Addr
}

func podHosts(t *testing.T, c *nodes.Cluster, pods []*corev1.Pod) []podHost {
	t.Helper()
	var out []podHost
	for _, p := range pods {
		h, ip, err := c.PodNetwork(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, podHost{name: p.Name, host: h, ip: ip})
	}
	return out
}

// meshReachable: every pod reaches every other one within timeout.
func meshReachable(t *testing.T, pods []podHost, timeout time.Duration) {
	t.Helper()
	for _, from := range pods {
		for _, to := range pods {
			if from.name == to.name {
				continue
			}
			if err := from.host.PingWithin(to.ip, timeout); err != nil {
				t.Errorf("pod %s (%s) to %s (%s): %v", from.name, from.ip, to.name, to.ip, err)
			}
		}
	}
}

// ring starts a pinger from each pod to the next one (all on different
// nodes) at 100/s.
func ring(t *testing.T, pods []podHost) []*lab.Pinger {
	t.Helper()
	var ps []*lab.Pinger
	for i, from := range pods {
		to := pods[(i+1)%len(pods)]
		p, err := from.host.StartPinger(to.ip, 10*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Stop() })
		ps = append(ps, p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, p := range ps {
		if err := p.WaitReceived(ctx, 5); err != nil {
			t.Fatal(err)
		}
	}
	return ps
}

// stopRing stops the pingers and returns their stats, logged.
func stopRing(t *testing.T, ps []*lab.Pinger) []lab.PingStats {
	t.Helper()
	var out []lab.PingStats
	for _, p := range ps {
		s := p.Stop()
		t.Logf("%s -> %s: %s", p.From.NS, p.To, s)
		out = append(out, s)
	}
	return out
}

// waitRollout waits until the DaemonSet has an updated, ready pod on
// every node (kubectl rollout status).
func waitRollout(t *testing.T, c *nodes.Cluster, ds string) {
	t.Helper()
	kubectl(t, c, "-n", namespace, "rollout", "status", "daemonset/"+ds, "--timeout=4m")
}

// backendTypes are the backend-type annotations of the Nodes.
func backendTypes(t *testing.T, c *nodes.Cluster) map[string]string {
	t.Helper()
	list, err := c.Admin.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, n := range list.Items {
		out[n.Name] = n.Annotations["overlayd.io/backend-type"]
	}
	return out
}

func waitBackend(t *testing.T, c *nodes.Cluster, want string, timeout time.Duration) {
	t.Helper()
	cluster.Eventually(t, timeout, "every node publishing backend "+want, func() (bool, string) {
		types := backendTypes(t, c)
		for _, v := range types {
			if v != want {
				return false, fmt.Sprint(types)
			}
		}
		return len(types) == len(c.Nodes), fmt.Sprint(types)
	})
}

// netConfPatch is a kubectl patch replacing the ConfigMap's net-conf.json.
func netConfPatch(t *testing.T, conf map[string]any) string {
	t.Helper()
	data, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	patch, err := json.Marshal(map[string]any{"data": map[string]string{"net-conf.json": string(data)}})
	if err != nil {
		t.Fatal(err)
	}
	return string(patch)
}

// readyz asks an overlayd's /readyz from inside its node, as the kubelet's
// probe does.
func readyz(n *nodes.Node) (int, string, error) {
	client := cluster.HTTPClient(n.Node, 2*time.Second)
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://127.0.0.1:9910/readyz")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), nil
}

// rolloutRestartUnderPing restarts the DaemonSet while every pod pings the
// next, and fails unless the new pods started beside the old ones
// (maxSurge) and no pinger lost more than maxLost packets.
func rolloutRestartUnderPing(ctx context.Context, t *testing.T, c *nodes.Cluster, pods []podHost, backend string, maxLost int) {
	t.Helper()
	ps := ring(t, pods)
	surged := watchSurge(ctx, t, c)
	kubectl(t, c, "-n", namespace, "rollout", "restart", "daemonset/overlayd")
	waitRollout(t, c, "overlayd")
	if n := surged(); n < 2 {
		t.Errorf("%s: at most %d overlayd pod per node during the rollout: the new pods did not start beside the old ones (maxSurge)", backend, n)
	}
	for _, s := range stopRing(t, ps) {
		if s.Lost > maxLost {
			t.Errorf("%s: lost %d packets during the rollout restart, more than %d (%s)", backend, s.Lost, maxLost, s)
		}
	}
}

// watchSurge watches the overlayd pods until the returned function is
// called, which returns the most seen at once on one node.
func watchSurge(ctx context.Context, t *testing.T, c *nodes.Cluster) func() int {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	most := make(chan int, 1)
	go func() {
		best := 0
		for ctx.Err() == nil {
			list, err := c.Admin.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=overlayd"})
			if err == nil {
				perNode := map[string]int{}
				for _, p := range list.Items {
					if p.Spec.NodeName != "" {
						perNode[p.Spec.NodeName]++
						best = max(best, perNode[p.Spec.NodeName])
					}
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
		most <- best
	}()
	return func() int { cancel(); return <-most }
}
