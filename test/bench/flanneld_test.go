package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	harness "github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/lab"
)

// flannelPrefix is the annotation prefix flanneld reads and writes; the
// overlayd agent of this benchmark is given it, so that both read the same
// peers.
const flannelPrefix = "flannel.alpha.coreos.com"

// flanneldDevice is the device flanneld's vxlan backend makes for VNI 1.
const flanneldDevice = "flannel.1"

// besideFlanneldLimit bounds the wait for an agent's cold start: flanneld
// at 10 000 peers has been seen with no route after 300 s.
const besideFlanneldLimit = 120 * time.Second

// besideFlanneldBatch is how many Nodes are added, then deleted, at once.
const besideFlanneldBatch = 100

var defaultBesideFlanneldCounts = []int{1000, 5000, 10000}

// BenchmarkBesideFlanneld runs the real flanneld (hack/tools/flannel) and
// overlayd, one after the other, as the one agent of a lab node against
// one real API server holding N peer Nodes (kubelet-sized, vxlan, flannel's
// annotations; overlayd runs with --kube-annotation-prefix
// flannel.alpha.coreos.com), IPv4. For each N (1000, 5000, 10 000) and each
// agent, from a clean kernel:
//
//   - time from starting the agent to every peer's route, neighbour and
//     FDB entry through its vxlan device (waited for up to 120 s), its CPU
//     seconds and VmRSS then;
//   - 100 new peer Nodes created at once: time until all their entries
//     are in the kernel; then the 100 deleted: time until they are gone.
//
// OVERLAYD_BENCH_FLANNELD_PEERS="1000,5000,10000" changes the peer counts.
//
//	go test -run '^$' -bench BesideFlanneld -benchtime 1x ./test/bench/
func BenchmarkBesideFlanneld(b *testing.B) {
	counts := peerCounts(b, "OVERLAYD_BENCH_FLANNELD_PEERS", defaultBesideFlanneldCounts)
	c := newCluster(b, clusterOptions{
		Nodes:          1,
		NetConf:        convergenceFamilies[0].netConf,
		AssignPodCIDRs: true,
		ManualAgents:   true,
		// --profiling: overlayd's CPU profile of the batch of added Nodes.
		Args: []string{"--kube-annotation-prefix", flannelPrefix, "--profiling"},
	})
	node := c.Lab.Nodes[0]
	peers := &peerSet{admin: c.Admin, network: c.Net.Network, subnetLen: c.Net.SubnetLen, prefix: flannelPrefix}
	res := BesideFlanneld{LimitSec: besideFlanneldLimit.Seconds(), BatchChange: besideFlanneldBatch}
	for _, n := range counts {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			peers.ensure(b, n)
			size := BesideFlanneldSize{Peers: n}
			for _, agent := range []string{harness.Overlayd, harness.Flanneld} {
				f := measureAgent(b, c, node, peers, agent, n)
				b.Logf("%s with %d peers: %+v", agent, n, f)
				size.Agents = append(size.Agents, f)
			}
			res.Sizes = append(res.Sizes, size)
		})
	}
	if err := WriteResult(BesideFlanneldFile, res); err != nil {
		b.Error(err)
	}
}

// measureAgent cold-starts agent on node against size peers and, if it
// programs them all in time, adds and deletes a batch of Nodes. It leaves
// the agent stopped and the node's kernel clean of both agents' devices.
func measureAgent(b *testing.B, c *cluster, node *lab.Node, peers *peerSet, agent string, size int) AgentFigures {
	f := AgentFigures{Agent: agent}
	dev := vxlanDevs[false]
	if agent == harness.Flanneld {
		dev = flanneldDevice
	}
	cleanNode(b, c, node)
	if err := c.UseAgent(node, agent); err != nil {
		b.Fatal(err)
	}
	defer cleanNode(b, c, node)

	want := entryCounts{size, size, size}
	start := time.Now()
	p := c.startAgent(node)
	var last entryCounts
	err := harness.Poll(interrupted, besideFlanneldLimit, pollInterval, func() (bool, string) {
		if !p.Running() {
			b.Fatalf("%s exited: %v\n%s", agent, p.ExitErr(), p.Tail(3000))
		}
		k, err := countThrough(node, dev)
		if err != nil {
			b.Fatal(err)
		}
		last = k
		return k == want, k.String()
	})
	f.Entries = last.String()
	if err != nil {
		if interrupted.Err() != nil {
			b.Fatal(err)
		}
		b.Logf("%s with %d peers: not programmed after %s: %s", agent, size, besideFlanneldLimit, last)
		return f
	}
	f.Programmed, f.ColdStartSec = true, time.Since(start).Seconds()
	if f.CPUSec, err = harness.ProcessCPUSeconds(p.Pid()); err != nil {
		b.Fatal(err)
	}
	if f.RSSKiB, _, err = harness.ProcessMemory(p.Pid()); err != nil {
		b.Fatal(err)
	}

	// The batch: Nodes numbered after the churn of the other benchmarks.
	var batch []int
	var entries peerEntries
	for i := range besideFlanneldBatch {
		batch = append(batch, churnBase+size+i)
		_, e := peers.node(churnBase + size + i)
		entries = append(entries, e...)
	}
	more := size + len(batch)
	var profile string
	profiled := make(chan error, 1)
	if agent == harness.Overlayd {
		go func() {
			var err error
			profile, err = cpuProfile(interrupted, node, time.Second, fmt.Sprintf("batch-add-%d.pb.gz", size))
			profiled <- err
		}()
	} else {
		profiled <- nil
	}
	f.AddSec = timeBatch(b, node, dev, entries, true, entryCounts{more, more, more}, func(ctx context.Context, i int) error {
		n, _ := peers.node(i)
		_, err := c.Admin.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
		return err
	}, batch)
	if err := <-profiled; err != nil {
		b.Fatal(err)
	}
	if profile != "" {
		b.Logf("overlayd's CPU profile of the first second of %d added Nodes at %d peers:\n%s", len(batch), size, profile)
	}
	f.DeleteSec = timeBatch(b, node, dev, entries, false, want, func(ctx context.Context, i int) error {
		n, _ := peers.node(i)
		return c.Admin.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{})
	}, batch)
	return f
}

// timeBatch makes change for every peer of batch (32 at a time, as a
// controller would) and returns the seconds from the first until the last
// of entries appeared (present) or went, as the kernel's own events tell;
// then the counts through dev must be want.
func timeBatch(b *testing.B, node *lab.Node, dev string, entries peerEntries, present bool, want entryCounts,
	change func(context.Context, int) error, batch []int) float64 {
	w, err := watchKernel(node)
	if err != nil {
		b.Fatal(err)
	}
	defer w.close()
	w.anyRouteProtocol = true
	start := time.Now()
	g, ctx := errgroup.WithContext(interrupted)
	g.SetLimit(32)
	for _, i := range batch {
		g.Go(func() error { return change(ctx, i) })
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(interrupted, besideFlanneldLimit)
	defer cancel()
	at, err := w.wait(ctx, entries, present)
	if err != nil {
		b.Fatal(err)
	}
	if k, err := countThrough(node, dev); err != nil || k != want {
		b.Fatalf("after the batch, through %s: %v, %v; want %v", dev, k, err, want)
	}
	return at.Sub(start).Seconds()
}

// cleanNode stops the node's agent and removes both agents' devices (and
// with them their routes, neighbour and FDB entries) and flanneld's
// iptables chains.
func cleanNode(b *testing.B, c *cluster, node *lab.Node) {
	if p := c.Agents[node.Name]; p != nil && p.Running() {
		if err := p.Stop(); err != nil && p.Running() {
			b.Fatal(err)
		}
	}
	if err := deleteLink(node, vxlanDevs[false]); err != nil {
		b.Fatal(err)
	}
	if err := harness.RemoveFlanneldState(interrupted, node); err != nil {
		b.Fatal(err)
	}
}
