package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	harness "github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/lab"
)

// surges is how many upgrades in a row each backend goes through.
const surges = 10

// maxWireGuardSurgeLoss: the gap between the old agent's wireguard-go
// stopping and the new one's running and handshaking is some 50-160 ms on
// this 2-core lab under load (up to 16 pings each way at 100/s), longer
// when the machine is busier.
const maxWireGuardSurgeLoss = 50

// kernelChange is what an agent logs when it changes the node's kernel
// state or traffic rules: two agents that agree never log it.
var kernelChange = regexp.MustCompile(`\t(added|removed|updated|created|replacing|restored|programmed|adopted) `)

// TestSurgeUpgrade: a DaemonSet update with maxSurge 1 and maxUnavailable
// 0, ten times in a row on node 1: a new agent starts beside the running
// one, which is stopped by SIGTERM 3 s later. Under a 100/s ping each way
// between pods on nodes 1 and 2, nothing is lost on udp (the new agent
// joins the TUN device and the UDP port, the old one lets go once it has),
// vxlan and host-gw. On wireguard in userspace (this kernel has no
// WireGuard) two wireguard-go instances cannot share the device: the new
// agent stands by, ready, and takes the device over when the old one lets
// go, so a surge loses what is sent in that gap, as a restart does: at most
// maxWireGuardSurgeLoss pings of both directions. While both run they agree: neither changes anything
// in the kernel (no change logged), and the kernel state is afterwards
// exactly what the leases call for.
func TestSurgeUpgrade(t *testing.T) {
	for _, backend := range []string{"udp", "vxlan", "host-gw", "wireguard"} {
		t.Run(backend, func(t *testing.T) {
			c := newCluster(t, clusterOptions{Nodes: 2, NetConf: netConf(backend)})
			c.requireFullMesh(c.Pods)
			n1 := c.node(0)
			a, b := c.PodsOn(n1)[0], c.PodsOn(c.node(1))[0]
			var pingers []*lab.Pinger
			for _, pair := range [][2]*lab.Pod{{a, b}, {b, a}} {
				p, err := pair[0].StartPinger(pair[1].IP, 10*time.Millisecond)
				if err != nil {
					t.Fatal(err)
				}
				pingers = append(pingers, p)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			counts := func() (sent, received int) {
				for _, p := range pingers {
					if err := p.WaitReceived(ctx, p.Stats().Received+30); err != nil {
						t.Fatalf("pinger %s -> %s: %v (%s)", p.From.NS, p.To, err, p.Stats())
					}
					s := p.Stats()
					sent, received = sent+s.Sent, received+s.Received
				}
				return sent, received
			}
			sent0, recv0 := counts()
			for i := range surges {
				old := c.Agents[n1.Name]
				oldLog := len(old.Log())
				next, err := n1.StartWithEnv(fmt.Sprintf("overlayd-surge%d", i+1), harness.AgentEnv(n1), c.AgentArgv(n1)...)
				if err != nil {
					t.Fatal(err)
				}
				time.Sleep(3 * time.Second) // the scenario: the old pod is deleted 3 s after the new one started
				if !next.Running() {
					t.Fatalf("surge %d: the new agent exited beside the old one:\n%s", i+1, next.Tail(3000))
				}
				overlap := old.Log()[oldLog:]
				if err := old.Signal(syscall.SIGTERM); err != nil {
					t.Fatal(err)
				}
				waitCtx, stop := context.WithTimeout(ctx, 15*time.Second)
				old.Wait(waitCtx)
				stop()
				if old.Running() {
					t.Fatalf("surge %d: the old agent did not exit on SIGTERM", i+1)
				}
				c.Agents[n1.Name] = next
				sent, recv := counts()
				lost := (sent - sent0) - (recv - recv0)
				t.Logf("%s surge %d: %d of %d pings lost", backend, i+1, lost, sent-sent0)
				allowed := 0
				if backend == "wireguard" {
					allowed = maxWireGuardSurgeLoss
				}
				if lost > allowed {
					t.Errorf("%s surge %d: %d of %d pings lost; want at most %d", backend, i+1, lost, sent-sent0, allowed)
				}
				sent0, recv0 = sent, recv
				for who, log := range map[string]string{"old": overlap, "new": next.Log()} {
					if m := kernelChanges(log); len(m) > 0 {
						t.Errorf("surge %d: the %s agent changed kernel state while both ran:\n%s", i+1, who, strings.Join(m, "\n"))
					}
				}
				if backend == "wireguard" && !containsAll(next.Log(), "standing by until it lets go", "the previous agent let go of the WireGuard device") {
					t.Errorf("surge %d: the new agent did not stand by and then take the WireGuard device over:\n%s", i+1, next.Tail(2000))
				}
				if backend == "udp" && !containsAll(old.Log(), "has joined the udp datapath; handing it over", "steered the datapath to the successor and read its queues empty") {
					t.Errorf("surge %d: the old agent did not wait for the new one to join the udp datapath and hand it over drained:\n%s", i+1, old.Tail(2000))
				}
			}
			for _, p := range pingers {
				t.Logf("%s -> %s over %d surges: %s", p.From.NS, p.To, surges, p.Stop())
			}
			c.requireKernelStateMatchesLeases()
			c.requireFullMesh(c.Pods)
		})
	}
}

// kernelChanges are the lines of an agent's log that say it changed the
// kernel.
func kernelChanges(log string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if kernelChange.MatchString(l) {
			out = append(out, l)
		}
	}
	return out
}
