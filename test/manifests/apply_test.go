package manifests

import (
	"context"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/subnet"
	"github.com/overlayd/overlayd/subnet/kube"
	"github.com/overlayd/overlayd/test/controlplane"
)

// TestAPIServerAcceptsManifests applies every manifest under Documentation/
// and every rendered kustomization to a real kube-apiserver with
// server-side dry-run: validated, defaulted and admitted (RBAC escalation
// checks, priority classes, pod security) exactly as a real apply, but not
// stored. Namespaces are created for real first, so that namespaced objects
// are admitted inside them. Calico's CRDs are not shipped (see
// Documentation/canal/README.md) and nothing shipped is a Calico resource.
func TestAPIServerAcceptsManifests(t *testing.T) {
	t.Parallel()
	cp := controlplane.StartT(t, controlplane.Options{})
	ctx := context.Background()
	srcs := sources(t)

	var namespaces []byte
	for _, s := range srcs {
		for _, o := range s.objs {
			if o.GetKind() == "Namespace" {
				data, err := yaml.Marshal(o.Object)
				if err != nil {
					t.Fatal(err)
				}
				namespaces = append(append(namespaces, "---\n"...), data...)
			}
		}
	}
	if len(namespaces) == 0 {
		t.Fatal("no Namespace in any manifest")
	}
	if _, err := cp.Apply(ctx, controlplane.Admin, namespaces, controlplane.ApplyOptions{}); err != nil {
		t.Fatalf("creating the namespaces: %v", err)
	}

	for _, s := range srcs {
		t.Run(s.name, func(t *testing.T) {
			var manifest []byte
			for _, o := range s.objs {
				// Built-in kinds decode strictly into their Go types: the
				// API server only warns about unknown fields.
				builtinTyped(t, o)
				data, err := yaml.Marshal(o.Object)
				if err != nil {
					t.Fatal(err)
				}
				manifest = append(append(manifest, "---\n"...), data...)
			}
			got, err := cp.Apply(ctx, controlplane.Admin, manifest, controlplane.ApplyOptions{DryRun: true})
			if err != nil {
				t.Fatalf("server-side dry-run apply: %v", err)
			}
			if len(got) != len(s.objs) {
				t.Fatalf("the API server answered %d objects of %d", len(got), len(s.objs))
			}
			for i, o := range got {
				if o.GetName() != s.objs[i].GetName() || o.GetKind() != s.objs[i].GetKind() {
					t.Errorf("object %d: sent %s %s, answer is %s %s", i, s.objs[i].GetKind(), s.objs[i].GetName(), o.GetKind(), o.GetName())
				}
			}
		})
	}
}

// TestShippedRBACRunsTheAgent applies Documentation/kube-overlayd.yml for
// real and runs overlayd's lease store as its ServiceAccount
// (kube-overlayd/overlayd) in both lease modes: the RBAC, moved into the
// kube-overlayd namespace, grants what the agent needs there. In lease mode
// the Leases go to the agent's own namespace, as overlayd does with
// POD_NAMESPACE set by the DaemonSet.
func TestShippedRBACRunsTheAgent(t *testing.T) {
	t.Parallel()
	const sa = "kube-overlayd/overlayd"
	cp := controlplane.StartT(t, controlplane.Options{ServiceAccounts: []string{sa}})
	ctx := context.Background()
	if _, err := cp.Apply(ctx, controlplane.Admin, readFile(t, overlaydManifest), controlplane.ApplyOptions{}); err != nil {
		t.Fatalf("applying %s: %v", overlaydManifest, err)
	}
	ds := daemonSet(t, overlaydObjects(t), "overlayd")
	namespace := ds.Namespace
	netConf := configMap(t, overlaydObjects(t), "kube-overlayd-cfg").Data["net-conf.json"]

	admin, err := kube.NewClient(cp.Config(controlplane.Admin))
	if err != nil {
		t.Fatal(err)
	}
	agent, err := kube.NewClient(kube.UseProtobuf(cp.Config(sa)))
	if err != nil {
		t.Fatal(err)
	}

	t.Run("podCIDR mode", func(t *testing.T) {
		cfg, _, err := backend.Load([]byte(netConf))
		if err != nil {
			t.Fatal(err)
		}
		if cfg.LeaseMode != netconf.LeaseModePodCIDR {
			t.Fatalf("the shipped net-conf.json is in lease mode %q; this subtest is about podCIDR mode", cfg.LeaseMode)
		}
		createNode(t, admin, "manifests-podcidr", "10.244.7.0/24")
		lease := acquire(t, agent, "manifests-podcidr", cfg, namespace)
		if lease.Subnet != netip.MustParsePrefix("10.244.7.0/24") {
			t.Errorf("lease %s, want the node's podCIDR 10.244.7.0/24", lease.Subnet)
		}
		n, err := admin.CoreV1().Nodes().Get(ctx, "manifests-podcidr", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if n.Annotations["overlayd.io/public-ip"] != "198.18.7.1" {
			t.Errorf("annotations of the node: %v", n.Annotations)
		}
	})

	t.Run("lease mode", func(t *testing.T) {
		var conf map[string]any
		if err := json.Unmarshal([]byte(netConf), &conf); err != nil {
			t.Fatal(err)
		}
		conf["LeaseMode"] = "lease"
		data, _ := json.Marshal(conf)
		cfg, _, err := backend.Load(data)
		if err != nil {
			t.Fatal(err)
		}
		createNode(t, admin, "manifests-lease", "")
		lease := acquire(t, agent, "manifests-lease", cfg, namespace)
		leases, err := admin.CoordinationV1().Leases(namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var holders []string
		for _, l := range leases.Items {
			if l.Spec.HolderIdentity != nil {
				holders = append(holders, *l.Spec.HolderIdentity)
			}
		}
		if len(leases.Items) != 1 || len(holders) != 1 || holders[0] != "manifests-lease" {
			t.Errorf("Leases in %s after acquiring %s: %d, holders %v; want one held by manifests-lease", namespace, lease.Subnet, len(leases.Items), holders)
		}
	})
}

func createNode(t *testing.T, c kubernetes.Interface, name, podCIDR string) {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if podCIDR != "" {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = podCIDR, []string{podCIDR}
	}
	if _, err := c.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// acquire runs the lease store as the agent would and returns its lease.
func acquire(t *testing.T, client kubernetes.Interface, node string, cfg *netconf.Config, namespace string) subnet.Lease {
	t.Helper()
	m, err := kube.New(kube.Config{
		Client:                    client,
		NodeName:                  node,
		Net:                       cfg,
		LeaseNamespace:            namespace,
		SetNodeNetworkUnavailable: true,
		Log:                       zaptest.NewLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	actx, acancel := context.WithTimeout(ctx, 60*time.Second)
	defer acancel()
	attrs := subnet.LeaseAttrs{
		PublicIP:    netip.MustParseAddr("198.18.7.1"),
		BackendType: "vxlan",
		BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"0a:58:0a:f4:07:01","Port":8472}`),
	}
	lease, err := m.Acquire(actx, attrs)
	if err != nil {
		select {
		case runErr := <-done:
			t.Fatalf("Acquire as %s: %v (Run: %v)", node, err, runErr)
		default:
		}
		t.Fatalf("Acquire as %s: %v", node, err)
	}
	return lease
}
