package udptunnel

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/overlayd/overlayd/pkg/kernel"
)

// iperfSeconds is the length of one iperf3 run.
const iperfSeconds = 3

// BenchmarkThroughput measures pod-to-pod TCP throughput (iperf3, one
// stream) across two namespace nodes, through the udp tunnel and, for
// comparison, through in-kernel vxlan on the same kind of underlay (veth,
// MTU 1500). Each iteration runs both, alternately, so that both see the
// same background load. Reported: mean Gbit/s of each and the median of the
// per-iteration udp/vxlan ratios.
//
//	go test ./pkg/udptunnel -run '^$' -bench Throughput -benchtime 8x
func BenchmarkThroughput(b *testing.B) {
	udp := newCluster(b, "bu", overlayUDP)
	udp.startTunnels()
	udp.waitPing(0, 1)
	vx := newCluster(b, "bv", overlayVXLAN)
	vx.waitPing(0, 1)
	for _, c := range []*cluster{udp, vx} {
		c.startIperfServer()
	}

	var udpSum, vxSum float64
	var ratios []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		v := vx.iperf()
		u := udp.iperf()
		b.Logf("round %d: udp %.2f Gbit/s, vxlan %.2f Gbit/s, ratio %.1f%% (load %s)", i+1, u, v, 100*u/v, loadAverage())
		udpSum, vxSum = udpSum+u, vxSum+v
		ratios = append(ratios, u/v)
	}
	b.StopTimer()
	slices.Sort(ratios)
	median := ratios[len(ratios)/2]
	if len(ratios)%2 == 0 {
		median = (ratios[len(ratios)/2-1] + median) / 2
	}
	n := float64(b.N)
	b.ReportMetric(udpSum/n, "udp-Gbit/s")
	b.ReportMetric(vxSum/n, "vxlan-Gbit/s")
	b.ReportMetric(100*median, "udp/vxlan-%")
}

func loadAverage() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// startIperfServer runs an iperf3 server in node 2's pod.
func (c *cluster) startIperfServer() {
	c.t.Helper()
	commandIn(c.t, c.nodes[1].pod, "iperf3", "-s", "-B", c.nodes[1].podAddr.String())
	waitFor(c.t, "iperf3 server", 10*time.Second, func() bool {
		out, _ := exec.Command("ip", "netns", "exec", c.nodes[1].pod, "ss", "-Hltn", "sport = :5201").Output()
		return strings.Contains(string(out), "5201")
	})
}

// iperf runs the client in node 1's pod and returns the received Gbit/s.
func (c *cluster) iperf() float64 {
	c.t.Helper()
	out, err := exec.Command("ip", "netns", "exec", c.nodes[0].pod, "iperf3", "-J",
		"-c", c.nodes[1].podAddr.String(), "-t", fmt.Sprint(iperfSeconds)).Output()
	if err != nil {
		c.t.Fatalf("iperf3 client: %v\n%s", err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		c.t.Fatalf("iperf3 output: %v\n%s", err, out)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9
}

// BenchmarkRestart measures how fast a fresh Tunnel forwards after the old
// one is gone, as when the agent restarts: per iteration node 1's Tunnel is
// closed (the device, its address and routes stay) and a new one is created
// and Ensured. A UDP stream from pod 1 to pod 2, one datagram per
// millisecond, runs throughout. Reported: ms from New to the first datagram
// forwarded by the new Tunnel, ms spent in New+Ensure, and the datagrams
// (= ms of outage) lost per restart; at 100 pings/s that is outage/10 pings.
func BenchmarkRestart(b *testing.B) {
	c := newCluster(b, "br", overlayUDP)
	ts := c.startTunnels()
	c.waitPing(0, 1)
	src, dst := c.nodes[0], c.nodes[1]
	rx, err := udpSocket(dst.pHandle, netip.AddrPortFrom(dst.podAddr, 9000))
	if err != nil {
		b.Fatal(err)
	}
	defer rx.Close()
	tx, err := udpSocket(src.pHandle, netip.AddrPortFrom(src.podAddr, 0))
	if err != nil {
		b.Fatal(err)
	}
	defer tx.Close()

	// Each datagram carries its send time; the receiver remembers the
	// arrival of the first one sent at or after `since`.
	epoch := time.Now()
	var since, firstArrival atomic.Int64
	since.Store(1 << 62)
	var received atomic.Int64
	go func() {
		buf := make([]byte, 64)
		for {
			n, _, err := rx.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if n < 8 {
				continue
			}
			received.Add(1)
			if sent := int64(binary.BigEndian.Uint64(buf)); sent >= since.Load() {
				firstArrival.CompareAndSwap(0, int64(time.Since(epoch)))
			}
		}
	}()
	var sent atomic.Int64
	stop := make(chan struct{})
	senderDone := make(chan struct{})
	go func() {
		defer close(senderDone)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		buf := make([]byte, 8)
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				binary.BigEndian.PutUint64(buf, uint64(time.Since(epoch)))
				if _, err := tx.WriteToUDPAddrPort(buf, netip.AddrPortFrom(dst.podAddr, 9000)); err == nil {
					sent.Add(1)
				}
			}
		}
	}()
	waitFor(b, "stream flowing", 5*time.Second, func() bool { return received.Load() > 10 })

	current := ts[0]
	var toFirst, inEnsure time.Duration
	sent0, received0 := sent.Load(), received.Load()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		current.Close()
		start := time.Since(epoch)
		firstArrival.Store(0)
		since.Store(int64(start))
		current = New(zap.NewNop())
		if err := kernel.InNamespace(src.handle, func() error { return current.Ensure(c.spec(0)) }); err != nil {
			b.Fatal(err)
		}
		inEnsure += time.Since(epoch) - start
		waitFor(b, "first datagram after restart", 5*time.Second, func() bool { return firstArrival.Load() != 0 })
		toFirst += time.Duration(firstArrival.Load()) - start
	}
	b.StopTimer()
	defer current.Close()
	close(stop)
	<-senderDone
	// Let the last datagrams land before counting losses.
	last := int64(-1)
	for last != received.Load() {
		last = received.Load()
		time.Sleep(50 * time.Millisecond)
	}
	lost := float64((sent.Load()-sent0)-(received.Load()-received0)) / float64(b.N)
	n := float64(b.N)
	b.ReportMetric(float64(toFirst.Microseconds())/1000/n, "ms-to-first-packet")
	b.ReportMetric(float64(inEnsure.Microseconds())/1000/n, "ms-in-ensure")
	b.ReportMetric(lost, "lost-ms/restart")
}

// BenchmarkEnsureUnchanged is the cost of a reconcile that changes nothing,
// with 1000 peers: the daemon calls Ensure on every pass.
func BenchmarkEnsureUnchanged(b *testing.B) {
	c := newCluster(b, "be", overlayUDP)
	spec := c.spec(0)
	for i := range 999 {
		spec.Peers[netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 250, byte(i >> 8), byte(i)}), 32)] =
			ap(netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i + 1)}))
	}
	tun := c.startTunnel(0, spec)
	b.ResetTimer()
	err := kernel.InNamespace(c.nodes[0].handle, func() error {
		for b.Loop() {
			if err := tun.Ensure(spec); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	if s := tun.Stats(); s.Attachments != 1 {
		b.Fatalf("Ensure re-attached: %d attachments", s.Attachments)
	}
}
