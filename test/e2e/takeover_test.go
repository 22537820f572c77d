package e2e

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	harness "github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/lab"
)

// TestTakeOverFromFlanneld: the documented migration, node by node, on a
// cluster of the real flanneld. On node-1 flanneld is stopped with SIGTERM
// and overlayd started, while pods on every node ping pods on the others at
// 100/s. overlayd takes the node over in place: on vxlan and host-gw no
// ping is lost; on udp no more than were sent while neither agent ran
// (flanneld's TUN goes with its process). Afterwards ip link, ip route and
// iptables-save on the node show nothing of flanneld's. Rolling the node
// back to flanneld (overlayd --uninstall, then flanneld) brings its
// connectivity back.
func TestTakeOverFromFlanneld(t *testing.T) {
	for _, backend := range []string{"vxlan", "host-gw", "udp"} {
		t.Run(backend, func(t *testing.T) {
			c := newCluster(t, clusterOptions{
				Nodes: 3, NetConf: netConf(backend), CNIPods: true,
				Args:          []string{"--kube-annotation-prefix", flannelPrefix, "--ip-masq"},
				FlanneldNodes: []string{"node-1", "node-2", "node-3"},
				FlanneldArgs:  []string{"--ip-masq"},
			})
			n1 := c.node(0)
			pingers := pingAcross(t, c, n1)

			// Stop flanneld, start overlayd: the gap is what udp may lose.
			// It opens at the SIGTERM: flanneld's udp proxy stops on the
			// signal, before the process has exited.
			stopped := time.Now()
			if err := c.Agents[n1.Name].Stop(); err != nil {
				t.Fatalf("stopping flanneld: %v", err)
			}
			t.Logf("flanneld exited %s after SIGTERM", time.Since(stopped).Round(time.Millisecond))
			if err := c.UseAgent(n1, harness.Overlayd); err != nil {
				t.Fatal(err)
			}
			if _, err := c.StartAgent(n1); err != nil {
				t.Fatal(err)
			}
			ready, err := c.WaitReady(context.Background(), n1, harness.ReadyTimeout)
			if err != nil {
				t.Fatal(err)
			}
			harness.Eventually(t, 30*time.Second, "the takeover finished", func() (bool, string) {
				return strings.Contains(c.Agents[n1.Name].Log(), "took the node over from flanneld"), ""
			})
			gap := ready.Sub(stopped)
			settle(t, pingers, time.Second)

			sent, lost := 0, 0
			for _, p := range pingers {
				s := p.Stop()
				t.Logf("%s -> %s: %s", p.From.NS, p.To, s)
				for _, r := range p.LossRuns() {
					t.Logf("  %d lost from %s", r.Count, r.Start.Format("15:04:05.000"))
				}
				sent, lost = sent+s.Sent, lost+s.Lost
			}
			// At 100/s per pinger, the pings sent while neither agent ran.
			allowed := 0
			if backend == "udp" {
				allowed = len(pingers) * (int(gap/(10*time.Millisecond)) + 1)
			}
			t.Logf("%s: flanneld stopped, overlayd ready %s later; %d of %d pings lost (allowed %d)", backend, gap.Round(time.Millisecond), lost, sent, allowed)
			if lost > allowed {
				t.Errorf("%d pings lost taking the node over; at most %d allowed", lost, allowed)
			}
			requireNothingOfFlanneld(t, n1)
			c.requireFullMesh(c.Pods)

			// Roll back: overlayd removes its datapath, flanneld starts.
			if err := c.Agents[n1.Name].Stop(); err != nil {
				t.Fatal(err)
			}
			if out, err := n1.Exec(context.Background(), overlaydBin, "--uninstall"); err != nil {
				t.Fatalf("overlayd --uninstall: %v\n%s", err, out)
			}
			requireNothingOfOverlayd(t, n1)
			if err := c.UseAgent(n1, harness.Flanneld); err != nil {
				t.Fatal(err)
			}
			if _, err := c.StartAgent(n1); err != nil {
				t.Fatal(err)
			}
			c.waitReady(n1)
			c.requireFullMesh(c.Pods)
		})
	}
}

// pingAcross pings at 100/s from a pod on n to a pod on every other node
// and back, and waits until all of them get answers.
func pingAcross(t *testing.T, c *cluster, n *lab.Node) []*lab.Pinger {
	t.Helper()
	var pingers []*lab.Pinger
	mine := c.PodsOn(n)[0]
	for _, other := range c.Lab.Nodes {
		if other == n {
			continue
		}
		theirs := c.PodsOn(other)[0]
		for _, pair := range [][2]*lab.Pod{{mine, theirs}, {theirs, mine}} {
			p, err := pair[0].StartPinger(pair[1].IP, 10*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { p.Stop() })
			pingers = append(pingers, p)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, p := range pingers {
		if err := p.WaitReceived(ctx, 20); err != nil {
			t.Fatalf("pinger %s -> %s: %v", p.From.NS, p.To, err)
		}
	}
	return pingers
}

// settle lets the pingers run on for d, so that pings in flight when the
// interesting part ended are answered or counted lost.
func settle(t *testing.T, pingers []*lab.Pinger, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d+10*time.Second)
	defer cancel()
	for _, p := range pingers {
		if err := p.WaitReceived(ctx, p.Stats().Received+int(d/(10*time.Millisecond))); err != nil {
			t.Fatalf("pinger %s -> %s after the takeover: %v", p.From.NS, p.To, err)
		}
	}
}

// requireNothingOfFlanneld: no device, route or iptables rule of flanneld's
// is left on the node.
func requireNothingOfFlanneld(t *testing.T, n *lab.Node) {
	t.Helper()
	links := run2(t, n, "ip", "-o", "link", "show")
	if strings.Contains(links, "flannel") {
		t.Errorf("%s: flanneld's devices left:\n%s", n.Name, links)
	}
	for _, line := range strings.Split(strings.TrimSpace(run2(t, n, "ip", "route", "show")), "\n") {
		// The underlay's, the pod bridge's (proto kernel) and overlayd's
		// (proto 79) are all there may be.
		if !strings.Contains(line, "proto kernel") && !strings.Contains(line, "proto 79") && !strings.HasPrefix(line, "default ") {
			t.Errorf("%s: a route not overlayd's nor the kernel's: %s", n.Name, line)
		}
	}
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		if out := run2(t, n, save); strings.Contains(out, "FLANNEL") || strings.Contains(out, "flanneld") {
			t.Errorf("%s: %s shows flanneld's rules:\n%s", n.Name, save, out)
		}
	}
}

// requireNothingOfOverlayd: --uninstall left no device, route or rule of
// overlayd's.
func requireNothingOfOverlayd(t *testing.T, n *lab.Node) {
	t.Helper()
	if links := run2(t, n, "ip", "-d", "link", "show"); strings.Contains(links, "alias overlayd") {
		t.Errorf("%s: overlayd's devices left:\n%s", n.Name, links)
	}
	if routes := run2(t, n, "ip", "route", "show", "proto", "79"); strings.TrimSpace(routes) != "" {
		t.Errorf("%s: overlayd's routes left:\n%s", n.Name, routes)
	}
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		if out := run2(t, n, save); strings.Contains(out, "OVERLAYD") {
			t.Errorf("%s: %s shows overlayd's rules:\n%s", n.Name, save, out)
		}
	}
}

// TestWaitsWhileFlanneldRuns: overlayd started on a node where flanneld
// still runs does not fight it: it says so (log, /readyz, an Event),
// publishes nothing and touches none of flanneld's devices; once flanneld
// stops it takes the node over and every pod reaches every other.
func TestWaitsWhileFlanneldRuns(t *testing.T) {
	c := newCluster(t, clusterOptions{
		Nodes: 2, NetConf: netConf("vxlan"), CNIPods: true,
		Args:          []string{"--kube-annotation-prefix", flannelPrefix},
		FlanneldNodes: []string{"node-1", "node-2"},
	})
	n1 := c.node(0)
	published := flannelAnnotations(t, c)

	// A second agent on the node, beside flanneld (its health server on a
	// port of its own).
	const port = harness.HealthzPort + 1
	argv := append(c.AgentArgv(n1), "--healthz-port", fmt.Sprint(port))
	ov, err := n1.StartWithEnv("overlayd-beside", harness.AgentEnv(n1), argv...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ov.Stop() })
	client := harness.HTTPClient(n1, 5*time.Second)
	defer client.CloseIdleConnections()
	readyz := func() string {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", port))
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.Status + "\n" + string(body)
	}
	harness.Eventually(t, 30*time.Second, "overlayd saying it waits for flanneld", func() (bool, string) {
		return strings.Contains(ov.Log(), "runs on this node: overlayd waits for it to stop") &&
			strings.Contains(readyz(), "flanneld (pid"), fmt.Sprintf("running %v exit %v; log:\n%s\nreadyz: %s", ov.Running(), ov.ExitErr(), ov.Tail(1000), readyz())
	})
	harness.Eventually(t, 30*time.Second, "a FlanneldRunning Event on the Node", func() (bool, string) {
		evs, err := c.Admin.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{FieldSelector: "reason=FlanneldRunning"})
		return err == nil && len(evs.Items) > 0 && evs.Items[0].InvolvedObject.Name == n1.Name, fmt.Sprint(err)
	})
	if strings.Contains(readyz(), "200 OK") {
		t.Errorf("ready while flanneld runs:\n%s", readyz())
	}
	if got := flannelAnnotations(t, c); got != published {
		t.Errorf("published while flanneld runs:\nbefore:\n%s\nafter:\n%s", published, got)
	}
	if links := run2(t, n1, "ip", "-o", "link", "show"); !strings.Contains(links, "flannel.1") || strings.Contains(links, "overlay.1") {
		t.Errorf("flanneld's device touched while it runs:\n%s", links)
	}
	c.requireFullMesh(c.Pods)

	// flanneld stops: overlayd takes the node over.
	if err := c.Agents[n1.Name].Stop(); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 30*time.Second, "overlayd ready after flanneld stopped", func() (bool, string) {
		return strings.Contains(readyz(), "200 OK") && strings.Contains(ov.Log(), "took the node over from flanneld"), readyz()
	})
	requireNothingOfFlanneld(t, n1)
	c.requireFullMesh(c.Pods)
}
