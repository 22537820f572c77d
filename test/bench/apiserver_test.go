package bench

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	harness "github.com/overlayd/overlayd/test/cluster"
)

// apiCostPeers is how many kubelet-size peer Nodes the API server holds;
// apiCostUpdates how many status updates (kubelet heartbeats) are sent to
// them per sample.
const (
	apiCostPeers   = 100
	apiCostUpdates = 200
)

// BenchmarkAPIServerCost measures, with the API server's own metrics
// (apiserver_watch_events_total and apiserver_watch_events_sizes), what a
// Node status update (a kubelet heartbeat, a condition or an image list
// changing) costs the API server for each agent: the watch events and bytes
// it sends to one overlayd agent, in podCIDR mode (agents watch every Node)
// and in Lease mode (agents watch Lease objects and only their own Node).
// Other watchers (the API server's own) are taken out by measuring the
// same updates with no agent running, then with one. Lease mode also
// reports the size of a Lease event, what every agent is sent when a peer
// renews its Lease (every 8 hours) or a node joins.
//
//	go test -run '^$' -bench APIServerCost -benchtime 1x ./test/bench/
func BenchmarkAPIServerCost(b *testing.B) {
	var res APIServerCost
	for _, mode := range []struct{ name, netConf string }{
		{"podCIDR", `{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}`},
		{"lease", `{"Network": "10.0.0.0/8", "LeaseMode": "lease", "Backend": {"Type": "vxlan"}}`},
	} {
		b.Run("mode="+mode.name, func(b *testing.B) {
			// AssignPodCIDRs in both modes: no controller manager, whose
			// Node watch would be one more watcher to take out.
			c := newCluster(b, clusterOptions{Nodes: 1, NetConf: mode.netConf, AssignPodCIDRs: true, ManualAgents: true})
			peers := &peerSet{admin: c.Admin, network: c.Net.Network, subnetLen: c.Net.SubnetLen}
			peers.ensure(b, apiCostPeers)
			r := APIServerModeCost{Mode: mode.name, Peers: apiCostPeers, Updates: apiCostUpdates}
			without := nodeUpdateCost(b, c, apiCostUpdates)
			leasesBefore := apiWatchEvents(b, c, "leases")
			c.startAgent(c.Lab.Nodes[0])
			c.waitReady(c.Lab.Nodes[0], time.Minute)
			with := nodeUpdateCost(b, c, apiCostUpdates)
			r.EventsPerUpdate = (with.events - without.events) / apiCostUpdates
			r.BytesPerUpdate = (with.bytes - without.bytes) / apiCostUpdates
			if l := apiWatchEvents(b, c, "leases").minus(leasesBefore); l.events > 0 {
				r.LeaseEventBytes = l.bytes / l.events
			}
			b.Logf("%s mode: a Node status update sends each agent %.2f watch events, %.0f bytes (%d updates; Lease event %.0f bytes)",
				mode.name, r.EventsPerUpdate, r.BytesPerUpdate, apiCostUpdates, r.LeaseEventBytes)
			res.Modes = append(res.Modes, r)
		})
	}
	if err := WriteResult(APIServerCostFile, res); err != nil {
		b.Fatal(err)
	}
}

// watchCost is what the API server has sent to all its watchers of one
// resource.
type watchCost struct{ events, bytes float64 }

func (w watchCost) minus(o watchCost) watchCost {
	return watchCost{w.events - o.events, w.bytes - o.bytes}
}

// apiWatchEvents reads the API server's watch event counters of resource.
func apiWatchEvents(b *testing.B, c *cluster, resource string) watchCost {
	b.Helper()
	ctx, cancel := context.WithTimeout(interrupted, 30*time.Second)
	defer cancel()
	raw, err := c.Admin.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		b.Fatalf("reading the API server's metrics: %v", err)
	}
	var w watchCost
	label := fmt.Sprintf(`resource=%q`, resource)
	for k, v := range harness.ParseSamples(string(raw)) {
		if !strings.Contains(k, label) {
			continue
		}
		switch {
		case strings.HasPrefix(k, "apiserver_watch_events_total{"):
			w.events += v
		case strings.HasPrefix(k, "apiserver_watch_events_sizes_sum{"):
			w.bytes += v
		}
	}
	return w
}

// nodeUpdateCost sends updates heartbeats to the peer Nodes, round robin,
// and returns what the API server sent its Node watchers for them. A watch
// of the benchmark's own sees every update arrive; the counters are then
// read until they stop moving, since the API server serves each watcher
// on its own.
func nodeUpdateCost(b *testing.B, c *cluster, updates int) watchCost {
	b.Helper()
	ctx, cancel := context.WithTimeout(interrupted, 2*time.Minute)
	defer cancel()
	nodes := c.Admin.CoreV1().Nodes()
	list, err := nodes.List(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	w, err := nodes.Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Stop()
	before := apiWatchEvents(b, c, "nodes")
	start := time.Now()
	for i := range updates {
		name := fmt.Sprintf("peer-%05d", i%apiCostPeers)
		n, err := nodes.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			b.Fatal(err)
		}
		// A heartbeat time of its own for each update: metav1.Time has
		// seconds, and an update that changes nothing sends no event.
		now := metav1.NewTime(start.Add(time.Duration(i+1) * time.Second))
		for j := range n.Status.Conditions {
			n.Status.Conditions[j].LastHeartbeatTime = now
		}
		if _, err := nodes.UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			b.Fatalf("heartbeat of %s: %v", name, err)
		}
	}
	for seen := 0; seen < updates; {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				b.Fatalf("the benchmark's Node watch ended after %d of %d updates", seen, updates)
			}
			if ev.Type == watch.Modified {
				seen++
			}
		case <-ctx.Done():
			b.Fatalf("the benchmark's Node watch saw %d of %d updates", seen, updates)
		}
	}
	last := apiWatchEvents(b, c, "nodes")
	for stable := 0; stable < 3; {
		pause(b, 100*time.Millisecond)
		now := apiWatchEvents(b, c, "nodes")
		if now == last {
			stable++
		} else {
			stable = 0
		}
		last = now
	}
	return last.minus(before)
}
