package chart

import (
	"strings"
	"testing"
)

// TestBadValuesRefused: each wrong value makes helm template fail, before
// anything reaches a cluster, with an error naming that value.
func TestBadValuesRefused(t *testing.T) {
	cases := []struct {
		vs   valueSet
		want []string // all in the error
	}{
		{valueSet{name: "VNI not a number", set: []string{"netConf.Backend.VNI=one"}}, []string{"/netConf/Backend/VNI", "want integer"}},
		{valueSet{name: "VNI out of range", set: []string{"netConf.Backend.VNI=16777216"}}, []string{"/netConf/Backend/VNI"}},
		{valueSet{name: "misspelt vxlan option", set: []string{"netConf.Backend.Prot=4789"}}, []string{"/netConf/Backend", "Prot"}},
		{valueSet{name: "host-gw takes no VNI", set: []string{"netConf.Backend.Type=host-gw", "netConf.Backend.VNI=2"}}, []string{"/netConf/Backend", "VNI"}},
		{valueSet{name: "udp port out of range", set: []string{"netConf.Backend.Type=udp", "netConf.Backend.Port=70000"}}, []string{"/netConf/Backend/Port"}},
		{valueSet{name: "lease mode", set: []string{"netConf.LeaseMode=leases"}}, []string{"/netConf/LeaseMode"}},
		{valueSet{name: "network not a CIDR", set: []string{"netConf.Network=10.244.0.0"}}, []string{"/netConf/Network"}},
		{valueSet{name: "net-conf.json key of no one", set: []string{"netConf.Netwrk=10.1.0.0/16"}}, []string{"/netConf", "Netwrk"}},
		{valueSet{name: "no backend type", set: []string{"netConf.Backend.Type=null"}}, []string{"/netConf/Backend", "Type"}},
		{valueSet{name: "annotation prefix", set: []string{"annotationPrefix=flannel alpha"}}, []string{"/annotationPrefix"}},
		{valueSet{name: "pull policy", set: []string{"image.pullPolicy=Sometimes"}}, []string{"/image/pullPolicy"}},
		{valueSet{name: "update strategy", set: []string{"updateStrategy.type=Replace"}}, []string{"/updateStrategy/type"}},
		{valueSet{name: "metrics port", set: []string{"metrics.port=0"}}, []string{"/metrics/port"}},
		{valueSet{name: "scrape interval", set: []string{"metrics.serviceMonitor.interval=often"}}, []string{"/metrics/serviceMonitor/interval"}},
		{valueSet{name: "conflist name", set: []string{"cni.confName=10-overlayd.conf"}}, []string{"/cni/confName"}},
		{valueSet{name: "calico MTU", set: []string{"canal.calico.mtu=big"}}, []string{"/canal/calico/mtu"}},
		{valueSet{name: "tolerations not a list", set: []string{"tolerations=all"}}, []string{"/tolerations"}},
		{valueSet{name: "value of no one", set: []string{"netconf.Network=10.1.0.0/16"}}, []string{"netconf"}},
		{valueSet{name: "canal in lease mode", set: []string{"canal.enabled=true", "netConf.LeaseMode=lease"}}, []string{"canal.enabled", "netConf.LeaseMode"}},
		{valueSet{name: "surge and unavailability", set: []string{"updateStrategy.rollingUpdate.maxUnavailable=10%"}},
			[]string{"updateStrategy.rollingUpdate", "maxSurge", "maxUnavailable"}},
		{valueSet{name: "ServiceMonitor without metrics", set: []string{"metrics.serviceMonitor.enabled=true"}}, []string{"metrics.serviceMonitor.enabled", "metrics.enabled"}},
	}
	for _, tc := range cases {
		t.Run(tc.vs.name, func(t *testing.T) {
			out, stderr, err := helm(t, append([]string{"template", "overlayd", repoPath(chartPath), "--namespace", namespace}, tc.vs.args(t)...)...)
			if err == nil {
				t.Fatalf("helm template accepted %v %q:\n%s", tc.vs.set, tc.vs.values, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("the error does not name %q:\n%s", w, stderr)
				}
			}
		})
	}
}
