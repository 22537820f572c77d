package chart

import (
	"context"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"github.com/overlayd/overlayd/backend"
	_ "github.com/overlayd/overlayd/backend/hostgw"
	_ "github.com/overlayd/overlayd/backend/udp"
	_ "github.com/overlayd/overlayd/backend/vxlan"
	"github.com/overlayd/overlayd/test/controlplane"
)

// valueSets are what operators set, each rendered, linted and applied.
var valueSets = []valueSet{
	{name: "host-gw", set: []string{"netConf.Backend.Type=host-gw"}},
	{name: "udp on port 8286", set: []string{"netConf.Backend.Type=udp", "netConf.Backend.Port=8286"}},
	{name: "vxlan VNI 4096 on 4789, direct routing", values: "netConf:\n  Network: 10.42.0.0/16\n  SubnetLen: 25\n  Backend:\n    Type: vxlan\n    VNI: 4096\n    Port: 4789\n    DirectRouting: true\n"},
	{name: "lease mode", set: []string{"netConf.LeaseMode=lease"}},
	{name: "migrating from flannel", set: []string{"annotationPrefix=flannel.alpha.coreos.com", "ifaceRegex[0]=^198\\.18\\."}},
	{name: "image, resources, scheduling", values: `image:
  repository: registry.example/overlayd
  tag: v0.2.0
  pullPolicy: Always
resources:
  requests: {cpu: 50m, memory: 40Mi}
  limits: {memory: 200Mi}
tolerations:
  - key: node-role.kubernetes.io/control-plane
    operator: Exists
    effect: NoSchedule
nodeSelector:
  kubernetes.io/os: linux
  overlayd: "yes"
updateStrategy:
  type: RollingUpdate
  rollingUpdate:
    maxSurge: 0
    maxUnavailable: 10%
extraEnv:
  - name: IPTABLES_MODE
    value: legacy
extraArgs: [--iptables-forward-rules=false]
`},
	{name: "metrics Service", set: []string{"metrics.enabled=true"}},
	{name: "CNI plugins only", set: []string{"cni.installConfig=false"}},
	{name: "the namespace in the chart", set: []string{"namespace.create=true"}},
	{name: "Canal", set: []string{"canal.enabled=true"}},
	{name: "a backend of a later release", values: "netConf:\n  Network: 10.244.0.0/16\n  Backend:\n    Type: wireguard\n    PersistentKeepaliveInterval: 25\n"},
}

// TestRenderingsAcceptedByAPIServer renders the chart for every value set
// and applies the result to a real kube-apiserver with server-side dry-run
// (validation, defaulting, admission, RBAC escalation checks), the
// namespaces created for real first. The rendered net-conf.json is what
// the value set says and, for the backends this overlayd has, what
// overlayd's own parser accepts.
func TestRenderingsAcceptedByAPIServer(t *testing.T) {
	cp := controlplane.StartT(t, controlplane.Options{})
	ctx := context.Background()
	if _, err := cp.Apply(ctx, controlplane.Admin, []byte("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: "+namespace+"\n"), controlplane.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, vs := range append([]valueSet{{name: "defaults"}}, valueSets...) {
		t.Run(vs.name, func(t *testing.T) {
			objs := render(t, vs)
			var manifest []byte
			for _, o := range objs {
				if o.GetKind() == "Namespace" {
					continue // exists; a dry run of it would not admit objects inside it
				}
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
			t.Logf("%d objects accepted", len(got))
			cm := find(objs, "ConfigMap", "kube-overlayd-cfg")
			if cm == nil {
				t.Fatal("no ConfigMap kube-overlayd-cfg")
			}
			var c corev1.ConfigMap
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(cm.Object, &c); err != nil {
				t.Fatal(err)
			}
			conf := c.Data["net-conf.json"]
			if vs.name == "a backend of a later release" {
				if !containsAll(conf, `"Type": "wireguard"`, `"PersistentKeepaliveInterval": 25`) {
					t.Errorf("the backend's options are not passed through:\n%s", conf)
				}
				return
			}
			if _, _, err := backend.Load([]byte(conf)); err != nil {
				t.Errorf("overlayd refuses the rendered net-conf.json: %v\n%s", err, conf)
			}
		})
	}
}

// TestServiceMonitor: with metrics and the ServiceMonitor on, the
// ServiceMonitor selects the metrics Service by its labels and scrapes its
// named port, which is the DaemonSet's metrics port and overlayd's
// --metrics-addr. (The Prometheus operator's CRD is not here: the API
// server cannot check this object.)
func TestServiceMonitor(t *testing.T) {
	objs := render(t, valueSet{name: "ServiceMonitor", set: []string{"metrics.enabled=true", "metrics.serviceMonitor.enabled=true", "metrics.port=9500"}})
	sm, svc, ds := find(objs, "ServiceMonitor", "overlayd"), find(objs, "Service", "overlayd-metrics"), find(objs, "DaemonSet", "overlayd")
	if sm == nil || svc == nil || ds == nil {
		t.Fatalf("ServiceMonitor %v, Service %v, DaemonSet %v", sm != nil, svc != nil, ds != nil)
	}
	sel, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
	for k, v := range sel {
		if svc.GetLabels()[k] != v {
			t.Errorf("the ServiceMonitor selects %s=%s, the Service has %v", k, v, svc.GetLabels())
		}
	}
	eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
	ports, _, _ := unstructured.NestedSlice(svc.Object, "spec", "ports")
	if len(eps) != 1 || len(ports) != 1 || eps[0].(map[string]any)["port"] != ports[0].(map[string]any)["name"] {
		t.Errorf("ServiceMonitor endpoints %v, Service ports %v", eps, ports)
	}
	containers, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "containers")
	c := containers[0].(map[string]any)
	if !containsAll(yamlString(c["args"]), "--metrics-addr=0.0.0.0:9500") || fmt.Sprint(ports[0].(map[string]any)["targetPort"]) != "9500" {
		t.Errorf("the overlayd container does not serve metrics on 9500, or the Service targets another port: %s %v", yamlString(c["args"]), ports)
	}
	if c["ports"] != nil {
		t.Errorf("the overlayd container declares ports %s: with hostNetwork they are host ports, and a surge pod cannot be scheduled beside it", yamlString(c["ports"]))
	}
}

func yamlString(v any) string {
	b, _ := yaml.Marshal(v)
	return string(b)
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
