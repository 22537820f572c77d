package manifests

import (
	"regexp"
	"strings"
	"testing"

	kindv1alpha4 "sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/yaml"

	"github.com/overlayd/overlayd/backend"
)

// TestKindConfig: hack/kind/kind-config.yaml is a valid kind v1alpha4
// Cluster (decoded strictly into kind's own types: a misspelt field is an
// error, as it is for `kind create cluster`), with kind's CNI off and the
// pod network overlayd is configured for.
func TestKindConfig(t *testing.T) {
	var c kindv1alpha4.Cluster
	if err := yaml.UnmarshalStrict(readFile(t, kindConfig), &c); err != nil {
		t.Fatalf("%s: %v", kindConfig, err)
	}
	if c.Kind != "Cluster" || c.APIVersion != "kind.x-k8s.io/v1alpha4" {
		t.Errorf("%s: kind %q, apiVersion %q", kindConfig, c.Kind, c.APIVersion)
	}
	if !c.Networking.DisableDefaultCNI {
		t.Error("kind's default CNI (kindnet) is enabled: it would attach pods instead of overlayd")
	}
	workers := 0
	for _, n := range c.Nodes {
		if n.Role == kindv1alpha4.WorkerRole {
			workers++
		}
	}
	if len(c.Nodes) < 2 {
		t.Errorf("%d nodes: traffic between nodes needs at least two", len(c.Nodes))
	}

	// The network overlayd gets on kind is the one kube-controller-manager
	// assigns podCIDRs from. kubeadm (which kind runs) gives IPv4 nodes /24s.
	rendered := decode(t, "hack/kind", render(t, "hack/kind"))
	cfg, _, err := backend.Load([]byte(configMap(t, rendered, "kube-overlayd-cfg").Data["net-conf.json"]))
	if err != nil {
		t.Fatal(err)
	}
	if c.Networking.PodSubnet != cfg.Network.String() {
		t.Errorf("kind podSubnet %q, net-conf.json Network %s: they must be equal", c.Networking.PodSubnet, cfg.Network)
	}
	if cfg.SubnetLen != 24 {
		t.Errorf("net-conf.json SubnetLen %d: kubeadm's node CIDRs are /24", cfg.SubnetLen)
	}
	if c.Networking.IPFamily != "" && c.Networking.IPFamily != kindv1alpha4.IPv4Family {
		t.Errorf("ipFamily %s: net-conf.json is IPv4 only", c.Networking.IPFamily)
	}
	t.Logf("%d nodes, %d workers, podSubnet %s", len(c.Nodes), workers, c.Networking.PodSubnet)
}

// TestKindCalicoVersion: hack/kind/up.sh installs the CRDs of the Calico
// release whose images Documentation/canal runs.
func TestKindCalicoVersion(t *testing.T) {
	script := string(readFile(t, "hack/kind/up.sh"))
	m := regexp.MustCompile(`projectcalico/calico/(v[0-9.]+)/manifests/crds\.yaml`).FindStringSubmatch(script)
	if m == nil {
		t.Fatal("hack/kind/up.sh names no Calico CRD manifest")
	}
	canal := decode(t, "hack/kind/canal", render(t, "hack/kind/canal"))
	ds := daemonSet(t, canal, "calico-node")
	for _, c := range append(ds.Spec.Template.Spec.InitContainers, ds.Spec.Template.Spec.Containers...) {
		if !strings.HasSuffix(c.Image, ":"+m[1]) {
			t.Errorf("container %s runs %s; hack/kind/up.sh installs the CRDs of Calico %s", c.Name, c.Image, m[1])
		}
	}
	for _, doc := range []string{"Documentation/canal/README.md"} {
		if !strings.Contains(string(readFile(t, doc)), "/"+m[1]+"/manifests/crds.yaml") {
			t.Errorf("%s does not name the CRDs of Calico %s", doc, m[1])
		}
	}
}
