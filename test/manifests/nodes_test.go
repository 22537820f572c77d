package manifests

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/subnet/kube"
	"github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/controlplane"
	"github.com/overlayd/overlayd/test/lab"
)

// TestDaemonSetOnNodes runs what the DaemonSet runs on two nodes built
// from network namespaces, against a real control plane that assigns
// podCIDRs from net-conf.json's Network: the real binary with the
// container's arguments, the environment the downward API gives it,
// authenticated as the DaemonSet's ServiceAccount with the RBAC of
// kube-overlayd.yml applied, and the ConfigMap's net-conf.json. The only
// additions are what a pod gets from its mounts and in-cluster config:
// --kubeconfig-file (the node's way to the API server), --net-config-path
// and --subnet-file (the node's own copies of the mounted paths).
// The kubelet's probes, asked exactly as the DaemonSet declares them, pass;
// pods attached with the shipped conflist's flannel configuration reach
// each other across the nodes.
func TestDaemonSetOnNodes(t *testing.T) {
	t.Parallel()
	objs := overlaydObjects(t)
	ds := daemonSet(t, objs, "overlayd")
	spec := &ds.Spec.Template.Spec
	c := container(t, spec, "overlayd", false)
	cm := configMap(t, objs, "kube-overlayd-cfg")
	netConf := cm.Data["net-conf.json"]
	cfg, _, err := backend.Load([]byte(netConf))
	if err != nil {
		t.Fatal(err)
	}
	sa := ds.Namespace + "/" + spec.ServiceAccountName
	cp := controlplane.StartT(t, controlplane.Options{
		ServiceAccounts:   []string{sa},
		ControllerManager: true,
		ClusterCIDR:       cfg.Network.String(),
		NodeCIDRMaskSize:  cfg.SubnetLen,
	})
	ctx := context.Background()
	if _, err := cp.Apply(ctx, controlplane.Admin, readFile(t, overlaydManifest), controlplane.ApplyOptions{}); err != nil {
		t.Fatalf("applying %s: %v", overlaydManifest, err)
	}
	admin, err := kube.NewClient(cp.Config(controlplane.Admin))
	if err != nil {
		t.Fatal(err)
	}
	l := lab.New(t, lab.Options{Prefix: labPrefix, Nodes: 2, ControlPlane: cp, KubeIdentity: sa})

	agents := map[string]*lab.Process{}
	for _, n := range l.Nodes {
		if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		confDir := filepath.Join(n.Dir, "etc", "kube-overlayd")
		if err := os.MkdirAll(confDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(confDir, "net-conf.json"), []byte(netConf), 0o644); err != nil {
			t.Fatal(err)
		}
		args := append([]string{overlaydBin}, c.Args...)
		args = append(args, "--kubeconfig-file="+n.Kubeconfig,
			"--net-config-path="+filepath.Join(confDir, "net-conf.json"), "--subnet-file="+n.SubnetEnv)
		p, err := n.StartWithEnv("overlayd", downwardEnv(t, c, ds.Namespace, n.Name), args...)
		if err != nil {
			t.Fatal(err)
		}
		agents[n.Name] = p
	}

	// The probes, as kubelet asks them: startup until it passes, then
	// readiness and liveness.
	for _, n := range l.Nodes {
		cluster.Eventually(t, 60*time.Second, "startup probe on "+n.Name, func() (bool, string) {
			if p := agents[n.Name]; !p.Running() {
				t.Fatalf("overlayd on %s exited: %v\n%s", n.Name, p.ExitErr(), p.Log())
			}
			return probe(n, c.StartupProbe)
		})
		for name, pr := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
			if ok, detail := probe(n, pr); !ok {
				t.Errorf("%s probe on %s fails after the startup probe passed: %s", name, n.Name, detail)
			}
		}
	}

	// The lab attaches CNI pods with the shipped conflist's flannel
	// configuration (as libcni hands it to the plugin: with the list's name
	// and cniVersion), plus paths that keep each node's files in its own
	// directory.
	shipped := shippedFlannelConfig(t, cm.Data["cni-conf.json"])
	var pods []*lab.Pod
	for _, n := range l.Nodes {
		var labConf map[string]any
		if err := json.Unmarshal(n.CNIConfig(), &labConf); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"subnetFile", "dataDir", "ipam"} {
			delete(labConf, k)
		}
		if !reflect.DeepEqual(labConf, shipped) {
			t.Fatalf("the lab's CNI config %v is not the shipped one %v", labConf, shipped)
		}
		p, err := n.AddCNIPod("p-" + n.Name)
		if err != nil {
			t.Fatal(err)
		}
		node, err := admin.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if podCIDR := netip.MustParsePrefix(node.Spec.PodCIDR); !podCIDR.Contains(p.IP) {
			t.Errorf("pod on %s got %s, outside the node's podCIDR %s", n.Name, p.IP, podCIDR)
		}
		pods = append(pods, p)
	}
	for i, from := range pods {
		to := pods[(i+1)%len(pods)]
		if err := from.PingWithin(to.IP, 30*time.Second); err != nil {
			t.Errorf("pod %s (%s) to pod %s (%s): %v", from.Name, from.IP, to.Name, to.IP, err)
		}
	}
}

// downwardEnv is the container's environment as the kubelet fills it in
// for a pod of the DaemonSet on node.
func downwardEnv(t *testing.T, c *corev1.Container, namespace, node string) []string {
	t.Helper()
	fields := map[string]string{
		"spec.nodeName":      node,
		"metadata.name":      "overlayd-" + node,
		"metadata.namespace": namespace,
	}
	var env []string
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env = append(env, e.Name+"="+e.Value)
		case e.ValueFrom.FieldRef != nil && fields[e.ValueFrom.FieldRef.FieldPath] != "":
			env = append(env, e.Name+"="+fields[e.ValueFrom.FieldRef.FieldPath])
		default:
			t.Fatalf("env %s: this test does not know how to fill in %s", e.Name, yamlString(e.ValueFrom))
		}
	}
	return env
}

// probe asks an HTTP probe the way kubelet does (a 2xx or 3xx answer
// passes), from the node's network namespace: the pod's, with hostNetwork.
func probe(n *lab.Node, p *corev1.Probe) (bool, string) {
	g := p.HTTPGet
	host := g.Host
	if host == "" {
		host = "127.0.0.1"
	}
	client := cluster.HTTPClient(n, time.Duration(max(p.TimeoutSeconds, 1))*time.Second)
	defer client.CloseIdleConnections()
	resp, err := client.Get(fmt.Sprintf("http://%s%s", net.JoinHostPort(host, g.Port.String()), g.Path))
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode >= 200 && resp.StatusCode < 400, fmt.Sprintf("%d %s", resp.StatusCode, body)
}

// shippedFlannelConfig is the conflist's flannel entry as libcni passes it
// to the plugin.
func shippedFlannelConfig(t *testing.T, conflistData string) map[string]any {
	t.Helper()
	var list struct {
		Name       string           `json:"name"`
		CNIVersion string           `json:"cniVersion"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(conflistData), &list); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(list.Plugins, func(p map[string]any) bool { return p["type"] == "flannel" })
	if i < 0 {
		t.Fatal("no flannel plugin in the conflist")
	}
	conf := list.Plugins[i]
	conf["name"], conf["cniVersion"] = list.Name, list.CNIVersion
	return conf
}
