package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	harness "github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/lab"
)

// throughputBackends are compared; the first is the reference.
var throughputBackends = []string{"vxlan", "host-gw", "udp", "wireguard"}

// overlayDevice is the device each backend carries pod traffic through.
var overlayDevice = map[string]string{"vxlan": vxlanDevs[false], "udp": "overlay0", "wireguard": "overlay-wg"}

// iperfSeconds is the measured length of one iperf3 run
// (OVERLAYD_BENCH_IPERF_SECONDS overrides it).
const iperfSeconds = 10

// throughputCluster is one backend's two-node cluster with a pod on each
// node and an iperf3 server in the second pod.
type throughputCluster struct {
	backend    string
	c          *cluster
	client     *lab.Pod
	server     *lab.Pod
	mtu        int
	gbps       []float64
	retransmit []int
	agentCPU   []float64
}

// BenchmarkThroughput measures pod-to-pod TCP throughput across two nodes
// for every backend in the same run: each backend is its own cluster (real
// API server, real overlayd on both nodes, pods attached by the real CNI
// plugins, which take the MTU from the subnet.env overlayd writes). Every
// iteration is one round in which each backend runs one iperf3 test, in an
// order that rotates from round to round so that no backend always goes
// first. Reported: the median Gbit/s of each backend, and its ratio to
// vxlan's.
//
//	go test -run '^$' -bench Throughput -benchtime 3x ./test/bench/
func BenchmarkThroughput(b *testing.B) {
	secs := iperfSeconds
	if s := os.Getenv("OVERLAYD_BENCH_IPERF_SECONDS"); s != "" {
		var err error
		if secs, err = strconv.Atoi(s); err != nil || secs < 1 {
			b.Fatalf("OVERLAYD_BENCH_IPERF_SECONDS=%q: want a number of seconds", s)
		}
	}
	var tcs []*throughputCluster
	for _, backend := range throughputBackends {
		tcs = append(tcs, newThroughputCluster(b, backend))
	}

	// One log line per round: a benchmark's log is cut after ten lines.
	round := 0
	for b.Loop() {
		var line []string
		for i := range tcs {
			tc := tcs[(i+round)%len(tcs)]
			gbps, retr, cpu := tc.run(b, secs)
			line = append(line, fmt.Sprintf("%s %.2f Gbit/s (%d retr, agents %.1f s CPU)", tc.backend, gbps, retr, cpu))
		}
		round++
		b.Logf("round %d: %s; load %s", round, strings.Join(line, ", "), loadAverage())
	}

	res := Throughput{Seconds: secs, Rounds: round}
	ref := Median(tcs[0].gbps)
	for _, tc := range tcs {
		res.Backends = append(res.Backends, BackendThroughput{
			Backend: tc.backend, MTU: tc.mtu, Gbps: tc.gbps, Retransmits: tc.retransmit, AgentCPU: tc.agentCPU,
		})
		unit := strings.ReplaceAll(tc.backend, "-", "")
		med := Median(tc.gbps)
		b.ReportMetric(med, unit+"-Gbit/s")
		if tc != tcs[0] && ref > 0 {
			b.ReportMetric(100*med/ref, unit+"/vxlan-%")
		}
	}
	if err := WriteResult(ThroughputFile, res); err != nil {
		b.Error(err)
	}
}

func newThroughputCluster(b *testing.B, backend string) *throughputCluster {
	b.Helper()
	start := time.Now()
	c := newCluster(b, clusterOptions{
		Nodes:   2,
		NetConf: fmt.Sprintf(`{"Network": "10.244.0.0/16", "Backend": {"Type": %q}}`, backend),
		CNIPods: true,
		// No controller manager: three idle ones would take CPU from the
		// datapaths being measured.
		AssignPodCIDRs: true,
	})
	tc := &throughputCluster{backend: backend, c: c, client: c.Pods[0], server: c.Pods[1]}
	mtu, err := strconv.Atoi(subnetEnv(b, c.Lab.Nodes[0], "FLANNEL_MTU"))
	if err != nil {
		b.Fatalf("%s: FLANNEL_MTU: %v", backend, err)
	}
	tc.mtu = mtu
	// The comparison is only fair if every pod uses the MTU overlayd chose,
	// and overlayd's device agrees.
	for _, p := range c.Pods {
		if got := linkMTU(b, &p.Host, "eth0"); got != mtu {
			b.Fatalf("%s: pod %s has MTU %d, overlayd's FLANNEL_MTU is %d", backend, p.Name, got, mtu)
		}
	}
	if dev := overlayDevice[backend]; dev != "" {
		for _, n := range c.Lab.Nodes {
			if got := linkMTU(b, &n.Host, dev); got != mtu {
				b.Fatalf("%s: %s on %s has MTU %d, FLANNEL_MTU is %d", backend, dev, n.Name, got, mtu)
			}
		}
	}
	if err := tc.client.PingWithin(tc.server.IP, 30*time.Second); err != nil {
		b.Fatalf("%s: pods cannot reach each other: %v", backend, err)
	}
	if _, err := tc.server.Start("iperf3", "iperf3", "-s", "-B", tc.server.IP.String()); err != nil {
		b.Fatalf("%s: starting iperf3 server: %v", backend, err)
	}
	waitFor(b, 10*time.Second, backend+": iperf3 server listening", func() (bool, string) {
		out, err := tc.server.Exec(context.Background(), "ss", "-Hltn", "sport = :5201")
		return err == nil && strings.Contains(out, "5201"), out
	})
	b.Logf("%s: pods %s -> %s, MTU %d, cluster ready in %s", backend, tc.client.IP, tc.server.IP, mtu,
		time.Since(start).Round(time.Millisecond))
	return tc
}

// run is one iperf3 test from the client pod to the server pod; it returns
// the received Gbit/s, the retransmits and the CPU both agents used.
func (tc *throughputCluster) run(b *testing.B, secs int) (float64, int, float64) {
	b.Helper()
	cpuBefore := tc.agentsCPU(b)
	ctx, cancel := context.WithTimeout(interrupted, time.Duration(secs+30)*time.Second)
	defer cancel()
	// -O 1: the first second (slow start) is left out of the result.
	out, err := tc.client.Command(ctx, "iperf3", "-J", "-c", tc.server.IP.String(),
		"-t", strconv.Itoa(secs), "-O", "1").Output()
	if err != nil {
		b.Fatalf("%s: iperf3 client: %v\n%s", tc.backend, err, out)
	}
	var res struct {
		End struct {
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &res); err != nil || res.Error != "" {
		b.Fatalf("%s: iperf3 output: %v %s\n%s", tc.backend, err, res.Error, out)
	}
	cpu := tc.agentsCPU(b) - cpuBefore
	gbps := res.End.SumReceived.BitsPerSecond / 1e9
	tc.gbps = append(tc.gbps, gbps)
	tc.retransmit = append(tc.retransmit, res.End.SumSent.Retransmits)
	tc.agentCPU = append(tc.agentCPU, cpu)
	return gbps, res.End.SumSent.Retransmits, cpu
}

// agentsCPU is the CPU time both agents have used so far.
func (tc *throughputCluster) agentsCPU(b *testing.B) float64 {
	var sum float64
	for _, n := range tc.c.Lab.Nodes {
		p := tc.c.Agents[n.Name]
		s, err := harness.ProcessCPUSeconds(p.Pid())
		if err != nil || !p.Running() {
			b.Fatalf("%s: agent on %s: %v (running %v)\n%s", tc.backend, n.Name, err, p.Running(), p.Tail(3000))
		}
		sum += s
	}
	return sum
}

func linkMTU(tb testing.TB, h *lab.Host, name string) int {
	tb.Helper()
	nl, err := h.Netlink()
	if err != nil {
		tb.Fatal(err)
	}
	defer nl.Close()
	link, err := nl.LinkByName(name)
	if err != nil {
		tb.Fatalf("%s: %s: %v", h.NS, name, err)
	}
	return link.Attrs().MTU
}

// loadAverage is the machine's 1-minute load average.
func loadAverage() string {
	data, _ := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(data)); len(f) > 0 {
		return f[0]
	}
	return "?"
}
