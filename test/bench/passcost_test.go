package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/overlayd/overlayd/subnet/kube"
	harness "github.com/overlayd/overlayd/test/cluster"
)

// defaultPassPeers are the peer counts of BenchmarkPassAfterOneChange.
var defaultPassPeers = []int{1000, 5000, 10000}

// BenchmarkPassAfterOneChange measures what one changed peer costs the
// agent at N peers (N = 1000, 5000, 10 000; OVERLAYD_BENCH_PASS_PEERS
// changes them): one peer Node's public IP is changed (its FDB entry must
// follow), and the agent's CPU from the change until the pass that applied
// it has ended is taken (/proc/<pid>/stat, the watch event's decoding and
// the /metrics reads that notice the pass's end included), with the
// duration of the passes it brought (overlayd_reconcile_duration_seconds). Work proportional
// to what changed keeps both flat as N grows. -benchtime Nx: N changes per
// peer count.
//
//	go test -run '^$' -bench PassAfterOneChange -benchtime 20x ./test/bench/
func BenchmarkPassAfterOneChange(b *testing.B) {
	counts := peerCounts(b, "OVERLAYD_BENCH_PASS_PEERS", defaultPassPeers)
	c := newCluster(b, clusterOptions{
		Nodes: 1, NetConf: `{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}`, AssignPodCIDRs: true, ManualAgents: true,
		// No timer passes while a change is measured; --profiling for the
		// CPU profile of the changes after them.
		Args: []string{"--resync-period", "1h", "--profiling"},
	})
	node := c.Lab.Nodes[0]
	peers := &peerSet{admin: c.Admin, network: c.Net.Network, subnetLen: c.Net.SubnetLen}
	var res PassCost
	changed := 0 // changes so far: each gives a peer a public IP of its own
	for _, n := range counts {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			peers.ensure(b, n)
			if p := c.Agents[node.Name]; p != nil && p.Running() {
				if err := p.Stop(); err != nil && p.Running() {
					b.Fatal(err)
				}
			}
			agent := c.startAgent(node)
			c.waitReady(node, 5*time.Minute)
			waitFor(b, 5*time.Minute, fmt.Sprintf("%d routes", n), func() (bool, string) {
				m := c.metrics(node)
				got := m[`overlayd_kernel_entries{kind="route"}`]
				return int(got) == n, fmt.Sprintf("%v routes", got)
			})
			r := PassCostSize{Peers: n}
			for i := 0; i < b.N; i++ {
				peer := changed % n
				_, moved := peers.node(churnBase + changed)
				changed++
				cpu, pass, passes := onePeerChange(b, c, agent.Pid(), fmt.Sprintf("peer-%05d", peer), moved[0].publicIP.String())
				r.CPUMs, r.PassMs, r.Passes = append(r.CPUMs, cpu), append(r.PassMs, pass), append(r.Passes, passes)
			}
			b.Logf("%d peers: one changed peer costs the agent %.1f ms CPU (median of %d), %.0f passes of %.1f ms in all",
				n, Median(r.CPUMs), len(r.CPUMs), Median(r.Passes), Median(r.PassMs))
			r.Profile = profileChanges(b, c, agent.Pid(), peers, n, &changed)
			b.Logf("%d peers: CPU profile of %d more changes:\n%s", n, profiledChanges, r.Profile)
			// The testing package runs a benchmark once with b.N = 1
			// before the -benchtime runs: the last run's figures count.
			res.Sizes = append(slices.DeleteFunc(res.Sizes, func(z PassCostSize) bool { return z.Peers == n }), r)
		})
	}
	if err := WriteResult(PassCostFile, res); err != nil {
		b.Fatal(err)
	}
}

// profiledChanges are the changes a CPU profile covers, one after another.
const profiledChanges = 5

// profileChanges takes a CPU profile of the agent while profiledChanges
// more peers move, and returns pprof's top functions by cumulative time.
func profileChanges(b *testing.B, c *cluster, pid int, peers *peerSet, n int, changed *int) string {
	b.Helper()
	node := c.Lab.Nodes[0]
	const d = 5 * time.Second
	var profile string
	var profileErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		profile, profileErr = cpuProfile(interrupted, node, d, fmt.Sprintf("passcost-%d.pb.gz", n))
	}()
	start := time.Now()
	pause(b, 200*time.Millisecond) // the profile has started
	for range profiledChanges {
		_, moved := peers.node(churnBase + *changed)
		onePeerChange(b, c, pid, fmt.Sprintf("peer-%05d", *changed%n), moved[0].publicIP.String())
		*changed++
	}
	if time.Since(start) > d {
		b.Logf("the %d changes took %s, longer than the profile's %s", profiledChanges, time.Since(start), d)
	}
	<-done
	if profileErr != nil {
		b.Fatal(profileErr)
	}
	return profile
}

// onePeerChange moves one peer to a new public IP and returns the agent's
// CPU milliseconds until the passes it brought ended, their duration in
// all and how many there were.
func onePeerChange(b *testing.B, c *cluster, pid int, peer, publicIP string) (cpuMs, passMs, passes float64) {
	b.Helper()
	node := c.Lab.Nodes[0]
	const runs, sum = "overlayd_reconcile_runs_total", "overlayd_reconcile_duration_seconds_sum"
	m0 := c.metrics(node)
	cpu0, err := harness.ProcessCPUSeconds(pid)
	if err != nil {
		b.Fatal(err)
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{
		kube.DefaultAnnotationPrefix + "/public-ip": publicIP,
	}}})
	ctx, cancel := context.WithTimeout(interrupted, time.Minute)
	defer cancel()
	if _, err := c.Admin.CoreV1().Nodes().Patch(ctx, peer, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		b.Fatalf("moving %s: %v", peer, err)
	}
	var m1 harness.Samples
	waitFor(b, time.Minute, "the pass after "+peer+" moved", func() (bool, string) {
		m1 = c.metrics(node)
		return m1[runs] > m0[runs], fmt.Sprintf("%v passes", m1[runs]-m0[runs])
	})
	// The kernel events of the pass's own changes may bring further
	// passes: they are part of what the change costs. Done when no pass
	// has started for three reads in a row.
	for quiet := 0; quiet < 3; {
		pause(b, 100*time.Millisecond)
		m := c.metrics(node)
		if m[runs] == m1[runs] {
			quiet++
		} else {
			quiet = 0
		}
		m1 = m
	}
	cpu1, err := harness.ProcessCPUSeconds(pid)
	if err != nil {
		b.Fatal(err)
	}
	return 1000 * (cpu1 - cpu0), 1000 * (m1[sum] - m0[sum]), m1[runs] - m0[runs]
}
