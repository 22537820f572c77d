package manifests

import (
	"encoding/json"
	"testing"

	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"

	"github.com/overlayd/overlayd/backend"
	_ "github.com/overlayd/overlayd/backend/hostgw"
	_ "github.com/overlayd/overlayd/backend/udp"
	_ "github.com/overlayd/overlayd/backend/vxlan"
	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/pkg/ip"
)

// conflist parses a CNI network configuration list with libcni, the parser
// container runtimes (containerd, CRI-O) use, and returns it with each
// plugin's configuration as a map.
func conflist(t *testing.T, name, data string) (*libcni.NetworkConfigList, []map[string]any) {
	t.Helper()
	list, err := libcni.ConfListFromBytes([]byte(data))
	if err != nil {
		t.Fatalf("%s is not a valid CNI conflist: %v", name, err)
	}
	var plugins []map[string]any
	for _, p := range list.Plugins {
		var m map[string]any
		if err := json.Unmarshal(p.Bytes, &m); err != nil {
			t.Fatal(err)
		}
		plugins = append(plugins, m)
	}
	return list, plugins
}

// field walks nested maps: field(m, "delegate", "hairpinMode").
func field(m map[string]any, path ...string) any {
	var v any = m
	for _, k := range path {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[k]
	}
	return v
}

func wantField(t *testing.T, name string, m map[string]any, want any, path ...string) {
	t.Helper()
	if got := field(m, path...); got != want {
		t.Errorf("%s: %v = %v (%T), want %v", name, path, got, got, want)
	}
}

// TestCNIConfig: the conflist the DaemonSet installs is one container
// runtimes accept: the flannel plugin delegating to bridge with hairpin
// mode (a pod reaches itself through its own Service) and the bridge as the
// pods' default gateway, then portmap for hostPort.
func TestCNIConfig(t *testing.T) {
	data := configMap(t, overlaydObjects(t), "kube-overlayd-cfg").Data["cni-conf.json"]
	list, plugins := conflist(t, "cni-conf.json", data)
	if list.Name != "cbr0" {
		t.Errorf("network name %q, want cbr0: flannel's, so host-local keeps the allocations of pods flannel attached", list.Name)
	}
	if list.CNIVersion != "0.3.1" {
		t.Errorf("cniVersion %q, want 0.3.1 (the flannel plugin of plugins v0.9.1 speaks up to 0.4.0)", list.CNIVersion)
	}
	if len(plugins) != 2 {
		t.Fatalf("%d plugins, want flannel then portmap", len(plugins))
	}
	flannel, portmap := plugins[0], plugins[1]
	wantField(t, "flannel", flannel, "flannel", "type")
	wantField(t, "flannel", flannel, true, "delegate", "hairpinMode")
	wantField(t, "flannel", flannel, true, "delegate", "isDefaultGateway")
	if typ := field(flannel, "delegate", "type"); typ != nil && typ != "bridge" {
		t.Errorf("flannel delegates to %v, want bridge", typ)
	}
	for _, k := range []string{"subnetFile", "dataDir"} {
		if v := field(flannel, k); v != nil {
			t.Errorf("flannel %s is set to %v: the DaemonSet's mounts assume the plugin's default", k, v)
		}
	}
	wantField(t, "portmap", portmap, "portmap", "type")
	wantField(t, "portmap", portmap, true, "capabilities", "portMappings")
}

// TestNetConf: net-conf.json in the ConfigMap is valid for overlayd's own
// parser, backend options included.
func TestNetConf(t *testing.T) {
	data := configMap(t, overlaydObjects(t), "kube-overlayd-cfg").Data["net-conf.json"]
	cfg, b, err := backend.Load([]byte(data))
	if err != nil {
		t.Fatalf("net-conf.json: %v", err)
	}
	if cfg.LeaseMode != netconf.LeaseModePodCIDR || !cfg.EnableIPv4 || cfg.EnableIPv6 {
		t.Errorf("net-conf.json: lease mode %s, IPv4 %t, IPv6 %t; the documentation describes podCIDR mode, IPv4 only", cfg.LeaseMode, cfg.EnableIPv4, cfg.EnableIPv6)
	}
	if b.Type() != "vxlan" {
		t.Errorf("backend %s, the documentation describes vxlan", b.Type())
	}
}

// TestCalicoCNIConfig: with the canal component, pods are attached by the
// calico plugin with addresses from the node's podCIDR (which is its
// overlayd lease, in podCIDR mode), and an MTU that fits overlayd's.
func TestCalicoCNIConfig(t *testing.T) {
	canal := decode(t, "hack/kind/canal", render(t, "hack/kind/canal"))
	data := configMap(t, canal, "calico-policy-cfg").Data["cni_network_config"]
	list, plugins := conflist(t, "cni_network_config", data)
	if len(plugins) != 2 {
		t.Fatalf("%d plugins, want calico then portmap", len(plugins))
	}
	calico, portmap := plugins[0], plugins[1]
	overlaydList, _ := conflist(t, "cni-conf.json", configMap(t, canal, "kube-overlayd-cfg").Data["cni-conf.json"])
	if list.Name != overlaydList.Name {
		t.Errorf("calico's network is %q, overlayd's %q: host-local would keep two records of the node's addresses and could hand one out twice", list.Name, overlaydList.Name)
	}
	wantField(t, "calico", calico, "calico", "type")
	wantField(t, "calico", calico, "kubernetes", "datastore_type")
	wantField(t, "calico", calico, "host-local", "ipam", "type")
	wantField(t, "calico", calico, "usePodCidr", "ipam", "subnet")
	wantField(t, "calico", calico, "k8s", "policy", "type")
	wantField(t, "portmap", portmap, "portmap", "type")
	wantField(t, "portmap", portmap, true, "capabilities", "portMappings")

	netConf := configMap(t, canal, "kube-overlayd-cfg").Data["net-conf.json"]
	cfg, b, err := backend.Load([]byte(netConf))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.LeaseMode != netconf.LeaseModePodCIDR {
		t.Errorf("lease mode %s: usePodCidr gives pods addresses from spec.podCIDR, which is the overlayd lease only in podCIDR mode", cfg.LeaseMode)
	}
	podMTU := b.MTU(backend.Node{Underlay: &ip.External{Iface: ip.Interface{MTU: 1500}}})
	if mtu, ok := field(calico, "mtu").(float64); !ok || int(mtu) != podMTU {
		t.Errorf("calico mtu %v, want %d: overlayd's pod MTU with its %s backend on a 1500-byte underlay", field(calico, "mtu"), podMTU, b.Type())
	}
}

// TestEveryNetConfParses: wherever net-conf.json or a CNI conflist appears
// — the manifests, the kustomizations and the examples in the
// documentation — it is valid for the parser that will read it.
func TestEveryNetConfParses(t *testing.T) {
	for _, s := range sources(t) {
		for _, o := range s.objs {
			if o.GetKind() != "ConfigMap" {
				continue
			}
			cm := typed[corev1.ConfigMap](t, o)
			for key, data := range cm.Data {
				name := s.name + ": ConfigMap " + cm.Name + " " + key
				switch {
				case key == "net-conf.json":
					if _, _, err := backend.Load([]byte(data)); err != nil {
						t.Errorf("%s: %v", name, err)
					}
				case key == "cni-conf.json" || key == "cni_network_config":
					conflist(t, name, data)
				}
			}
		}
	}
}
