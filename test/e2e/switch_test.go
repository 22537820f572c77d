package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/overlayd/overlayd/backend/vxlan"
	harness "github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/lab"
)

// publishedBackend is the backend-type a node publishes.
func (c *cluster) publishedBackend(n *lab.Node) string {
	node, err := c.Admin.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{})
	if err != nil {
		return "error: " + err.Error()
	}
	return node.Annotations[annotationPrefix+"backend-type"]
}

// switchStep is one rolling configuration change: the net-conf.json every
// node gets, how to tell from the API that a node has applied it, and
// whether it turns vxlan's DirectRouting on.
type switchStep struct {
	name          string
	conf          string
	applied       func(peerLease) bool
	directRouting bool
}

func backendStep(backend string) switchStep {
	return switchStep{name: backend, conf: netConf(backend),
		applied: func(l peerLease) bool { return l.backendType == backend }}
}

// busyWriter appends to path 200 times a second until the test ends.
func busyWriter(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				f.WriteString("a log line\n")
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done; f.Close() })
}

// rollOut applies each step by rewriting net-conf.json on the nodes one at
// a time, as a rolling ConfigMap update does, while another file of its
// directory is written 200 times a second, while pods on different nodes
// ping each other at 100/s around the ring of nodes. After each step every
// pod pair is reachable and the kernel holds exactly what the new
// configuration calls for (nothing of an old one is left on any node). It
// returns the pings sent and lost over the whole sequence.
func rollOut(t *testing.T, c *cluster, steps ...switchStep) (sent, lost int) {
	t.Helper()
	// Another file of the directory is written all the time, as a log
	// would be: the change must be read all the same.
	for _, n := range c.Lab.Nodes {
		busyWriter(t, filepath.Join(filepath.Dir(c.NetConfPath(n)), "busy.log"))
	}
	var pingers []*lab.Pinger
	for i := range c.Lab.Nodes {
		src := c.PodsOn(c.node(i))[0]
		dst := c.PodsOn(c.node((i + 1) % len(c.Lab.Nodes)))[0]
		for _, to := range []netip.Addr{dst.IP, dst.IP6} { // each family the pods have
			if !to.IsValid() {
				continue
			}
			p, err := src.StartPinger(to, 10*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			pingers = append(pingers, p)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, p := range pingers {
		if err := p.WaitReceived(ctx, 20); err != nil {
			t.Fatalf("pinger %s -> %s: %v", p.From.NS, p.To, err)
		}
	}

	for _, step := range steps {
		start := time.Now()
		for _, n := range c.Lab.Nodes {
			c.writeNetConf(n, step.conf)
			c.directRouting[n.Name] = step.directRouting
			harness.Eventually(t, 60*time.Second, n.Name+" applies "+step.name, func() (bool, string) {
				l := c.leases()[n.Name]
				return step.applied(l), fmt.Sprintf("%+v", l)
			})
		}
		c.requireFullMesh(c.Pods)
		// Old devices drain (until no peer sends with them), then go.
		c.requireKernelStateMatchesLeases()
		for _, n := range c.Lab.Nodes {
			if !c.Agents[n.Name].Running() {
				t.Fatalf("agent on %s exited during the switch:\n%s", n.Name, c.Agents[n.Name].Tail(2000))
			}
		}
		var sent, lost int
		for _, p := range pingers {
			s := p.Stats()
			sent, lost = sent+s.Sent, lost+s.Lost
		}
		t.Logf("%s applied in %s; pings so far: %d sent, %d lost", step.name, time.Since(start).Round(time.Millisecond), sent, lost)
	}

	for _, p := range pingers {
		s := p.Stop()
		t.Logf("%s -> %s: %s", p.From.NS, p.To, s)
		for _, r := range p.LossRuns() {
			t.Logf("  %d lost from %s", r.Count, r.Start.Format("15:04:05.000"))
		}
		sent, lost = sent+s.Sent, lost+s.Lost
	}
	for _, n := range c.Lab.Nodes {
		if v := metricValue(t, c, n, `overlayd_config_reloads_total{result="applied"}`); int(v) != len(steps) {
			t.Errorf("%s: %v configuration reloads applied, want %d", n.Name, v, len(steps))
		}
	}
	return sent, lost
}

// TestSwitchBackendsLive: the backend is switched vxlan → host-gw → udp →
// vxlan on a running cluster; over the whole sequence the pings lose at
// most 1%.
func TestSwitchBackendsLive(t *testing.T) {
	c := newCluster(t, clusterOptions{Nodes: 3, NetConf: netConf("vxlan")})
	c.requireFullMesh(c.Pods)
	c.requireKernelStateMatchesLeases()
	sent, lost := rollOut(t, c, backendStep("host-gw"), backendStep("udp"), backendStep("vxlan"))
	ratio := float64(lost) / float64(sent)
	t.Logf("whole switch sequence vxlan -> host-gw -> udp -> vxlan: %d of %d pings lost (%.3f%%)", lost, sent, 100*ratio)
	if ratio > 0.01 {
		t.Fatalf("lost %.3f%% of pings across the backend switches; at most 1%% allowed", 100*ratio)
	}
}

// TestSwitchVXLANOptionsLive: vxlan's options change on a running cluster
// the same way — a new VNI, a new port, direct routing — with the old
// devices drained and removed and at most 1% of the pings lost.
func TestSwitchVXLANOptionsLive(t *testing.T) {
	c := newCluster(t, clusterOptions{Nodes: 3, NetConf: netConf("vxlan")})
	c.requireFullMesh(c.Pods)
	conf := func(opts string) string {
		return fmt.Sprintf(`{"Network": %q, "Backend": {"Type": "vxlan"%s}}`, clusterCIDR, opts)
	}
	sent, lost := rollOut(t, c,
		switchStep{name: "VNI 2", conf: conf(`, "VNI": 2`),
			applied: func(l peerLease) bool { return l.vni == 2 && l.port == vxlan.DefaultPort }},
		switchStep{name: "VNI 2 on port 4789", conf: conf(`, "VNI": 2, "Port": 4789`),
			applied: func(l peerLease) bool { return l.vni == 2 && l.port == 4789 }},
		switchStep{name: "direct routing", conf: conf(`, "VNI": 2, "Port": 4789, "DirectRouting": true`),
			applied: func(l peerLease) bool { return l.vni == 2 && l.port == 4789 }, directRouting: true},
	)
	ratio := float64(lost) / float64(sent)
	t.Logf("VNI, port and direct routing changed: %d of %d pings lost (%.3f%%)", lost, sent, 100*ratio)
	if ratio > 0.01 {
		t.Fatalf("lost %.3f%% of pings across the option changes; at most 1%% allowed", 100*ratio)
	}
}

// TestRefusedConfigLeavesDatapathAlone: an invalid net-conf.json and one
// with a changed Network are refused and logged, and the running datapath
// is untouched.
func TestRefusedConfigLeavesDatapathAlone(t *testing.T) {
	c := newCluster(t, clusterOptions{Nodes: 2})
	c.requireFullMesh(c.Pods)
	n := c.node(0)
	before := strings.Join(kernelState(t, n), "\n")
	src, dst := c.PodsOn(n)[0], c.PodsOn(c.node(1))[0]
	pinger, err := src.StartPinger(dst.IP, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, conf, result, logged string
	}{
		{"invalid JSON", `{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan",}`, "invalid", "JSON syntax error"},
		{"unknown backend", `{"Network": "10.244.0.0/16", "Backend": {"Type": "geneve"}}`, "invalid", `unknown backend type \"geneve\"`},
		{"changed Network", `{"Network": "10.245.0.0/16", "Backend": {"Type": "host-gw"}}`, "refused", "Network: changed from 10.244.0.0/16 to 10.245.0.0/16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			metric := fmt.Sprintf(`overlayd_config_reloads_total{result=%q}`, tc.result)
			count := metricValue(t, c, n, metric)
			c.writeNetConf(n, tc.conf)
			harness.Eventually(t, 30*time.Second, "reload "+tc.result, func() (bool, string) {
				return metricValue(t, c, n, metric) == count+1, c.Agents[n.Name].Tail(500)
			})
			log := c.Agents[n.Name].Log()
			if !containsAll(log, "refusing changed network configuration", tc.logged) {
				t.Errorf("refusal not logged with %q:\n%s", tc.logged, c.Agents[n.Name].Tail(1500))
			}
			if after := strings.Join(kernelState(t, n), "\n"); after != before {
				t.Errorf("the datapath changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			if got := c.publishedBackend(n); got != "vxlan" {
				t.Errorf("published backend changed to %q", got)
			}
		})
	}
	// The running configuration stays in force, and traffic never stopped.
	if err := pinger.WaitReceived(context.Background(), pinger.Stats().Received+20); err != nil {
		t.Fatal(err)
	}
	if s := pinger.Stop(); s.Lost != 0 {
		t.Errorf("pings lost while refusing configurations: %s", s)
	}
	c.requireKernelStateMatchesLeases()
}
