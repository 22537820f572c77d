package bench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/subnet/kube"
	harness "github.com/overlayd/overlayd/test/cluster"
	"github.com/overlayd/overlayd/test/lab"
)

// The convergence cluster: one lab node runs the agent; every other Node
// exists only in the API server, published as a vxlan peer. vxlan needs no
// on-link peers, so their public addresses need not exist.
const (
	// convergenceResync makes no-change reconciles frequent enough to
	// average a few of them in a short quiet window.
	convergenceResync = 2 * time.Second
	// peerSubnetBase: peer i has subnet number peerSubnetBase+i of each
	// network; the lab node has number 1.
	peerSubnetBase = 256
	// churnBase: peers added and deleted one at a time are numbered from here.
	churnBase = 50000
)

// convergenceFamilies are the variants of the benchmark, run one after the
// other, each with a cluster of its own: an IPv4-only one, and a
// dual-stack one whose peers each have an IPv4 and an IPv6 podCIDR, public
// address and backend data, as dual-stack nodes running overlayd or
// flanneld publish them. Both networks have room for 65536 subnets.
var convergenceFamilies = []struct {
	family  string // as OVERLAYD_BENCH_FAMILIES names it
	netConf string
}{
	{FamilyIPv4, `{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}`},
	{FamilyDual, `{"Network": "10.0.0.0/8", "EnableIPv6": true, "IPv6Network": "fd00:10::/48", "Backend": {"Type": "vxlan"}}`},
}

var defaultPeerCounts = []int{1000, 5000}

// BenchmarkConvergence runs one real overlayd agent on a lab node against a
// real API server holding N peer Nodes (N = 1000, then 5000; as many as a
// kubelet-registered Node is big: status, images, labels), first in an
// IPv4-only cluster, then in a dual-stack one (its own control plane and
// lab, the agent with a dual-stack net-conf.json, every peer dual-stack:
// twice the kernel entries). For each N:
//
//   - cold starts (no agent, nothing in the kernel; 3, the median taken):
//     time from starting the agent to the first route, and to every route,
//     neighbour and FDB entry of every family, and the agent's CPU seconds
//     until then;
//   - a quiet window: the mean duration of the reconciles that change
//     nothing (overlayd_reconcile_duration_seconds), the agent's CPU, its
//     VmRSS and VmHWM;
//   - a warm restart (everything in place): time to /readyz, and how many
//     kernel entries it wrote (want none);
//   - each iteration (-benchtime Nx: N samples): one new peer Node is
//     created and the time until its route, neighbour and FDB entry (of
//     each family) are in the kernel is taken, then it is deleted and the
//     time until all of them are gone is taken.
//
// OVERLAYD_BENCH_PEERS="1000,5000" changes the peer counts,
// OVERLAYD_BENCH_FAMILIES="ipv4,dual" the variants,
// OVERLAYD_BENCH_COLD_STARTS=3 the cold starts per peer count.
//
//	go test -run '^$' -bench Convergence -benchtime 5x ./test/bench/
func BenchmarkConvergence(b *testing.B) {
	counts := peerCounts(b, "OVERLAYD_BENCH_PEERS", defaultPeerCounts)
	families := []string{FamilyIPv4, FamilyDual}
	if s := os.Getenv("OVERLAYD_BENCH_FAMILIES"); s != "" {
		families = nil
		for _, f := range strings.Split(s, ",") {
			f = strings.TrimSpace(f)
			if f != FamilyIPv4 && f != FamilyDual {
				b.Fatalf("OVERLAYD_BENCH_FAMILIES=%q: want %s, %s or both", s, FamilyIPv4, FamilyDual)
			}
			families = append(families, f)
		}
	}
	var res Convergence
	for _, v := range convergenceFamilies {
		if !slices.Contains(families, v.family) {
			continue
		}
		// A sub-benchmark per family: its cluster is removed before the
		// next one starts, so the two never compete.
		b.Run("family="+v.family, func(b *testing.B) {
			c := newCluster(b, clusterOptions{
				Nodes:          1,
				NetConf:        v.netConf,
				AssignPodCIDRs: true,
				ManualAgents:   true,
				// --profiling: the heap profile after the quiet window.
				Args: []string{"--resync-period", convergenceResync.String(), "--profiling"},
			})
			peers := &peerSet{admin: c.Admin, network: c.Net.Network, subnetLen: c.Net.SubnetLen}
			if c.Net.EnableIPv6 {
				peers.dual, peers.network6, peers.subnetLen6 = true, c.Net.IPv6Network, c.Net.IPv6SubnetLen
			}
			for _, n := range counts {
				b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
					r := measureConvergence(b, c, peers, n)
					r.Family = v.family
					res.Sizes = append(res.Sizes, r)
				})
			}
		})
	}
	if err := WriteResult(ConvergenceFile, res); err != nil {
		b.Error(err)
	}
}

// peerCounts reads increasing peer counts below churnBase from the
// environment variable env ("1000,5000"), or returns defaults when it is
// not set.
func peerCounts(b *testing.B, env string, defaults []int) []int {
	s := os.Getenv(env)
	if s == "" {
		return defaults
	}
	var counts []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 1 || v >= churnBase || (len(counts) > 0 && v <= counts[len(counts)-1]) {
			b.Fatalf("%s=%q: want increasing peer counts below %d", env, s, churnBase)
		}
		counts = append(counts, v)
	}
	return counts
}

func measureConvergence(b *testing.B, c *cluster, peers *peerSet, size int) ConvergenceSize {
	node := c.Lab.Nodes[0]
	res := ConvergenceSize{Peers: size, EntriesPerPeer: 3}
	if peers.dual {
		res.EntriesPerPeer = 6
	}
	start := time.Now()
	created := peers.ensure(b, size)
	res.CreateSeconds = time.Since(start).Seconds()
	b.Logf("created %d peer Nodes in %s (%d in the API)", created, time.Since(start).Round(time.Millisecond), size)

	// Cold starts, the median taken: no agent, nothing of overlayd's in the
	// kernel. The last one's agent stays for what follows.
	var firsts, cpus []float64
	res.LoadAverage = loadAverage()
	for i := range coldStarts(b) {
		var profile *string
		if i == coldStarts(b)-1 {
			profile = &res.ColdStartCPUTop
		}
		first, all, cpu := coldStart(b, c, node, peers.dual, size, profile)
		firsts, res.ColdStartsSec, cpus = append(firsts, first), append(res.ColdStartsSec, all), append(cpus, cpu)
	}
	res.FirstEntrySec, res.ConvergedSec, res.ColdStartCPUSec = Median(firsts), Median(res.ColdStartsSec), Median(cpus)
	b.Logf("cold starts with %d peers (load average %s): first route after %.2f s, all entries after %.2f s (median of %s s), agent CPU %.2f s (median of %s s)",
		size, res.LoadAverage, res.FirstEntrySec, res.ConvergedSec, seconds(res.ColdStartsSec), res.ColdStartCPUSec, seconds(cpus))
	c.waitReady(node, time.Minute)
	var err error
	if res.ReadyRSSKiB, _, err = harness.ProcessMemory(c.Agents[node.Name].Pid()); err != nil {
		b.Fatal(err)
	}
	b.Logf("at ready after the last cold start: VmRSS %.1f MiB", float64(res.ReadyRSSKiB)/1024)

	quietWindow(b, c, node, &res)

	w, err := watchKernel(node)
	if err != nil {
		b.Fatal(err)
	}
	defer w.close()
	warmRestart(b, c, node, w, &res)

	i := 0
	for b.Loop() {
		add, del := churnOnce(b, c.Admin, peers, w, churnBase+size+i)
		res.AddMs = append(res.AddMs, ms(add))
		res.DeleteMs = append(res.DeleteMs, ms(del))
		i++
	}
	b.Logf("one peer added: median %.1f ms %v; deleted: median %.1f ms %v", Median(res.AddMs), res.AddMs, Median(res.DeleteMs), res.DeleteMs)

	b.ReportMetric(res.ConvergedSec, "s-to-converge")
	b.ReportMetric(Median(res.AddMs), "ms-peer-add")
	b.ReportMetric(Median(res.DeleteMs), "ms-peer-delete")
	b.ReportMetric(float64(res.VmRSSKiB)/1024, "MiB-RSS")
	b.ReportMetric(float64(res.VmHWMKiB)/1024, "MiB-peakRSS")
	b.ReportMetric(res.NoopReconcileMs, "ms-noop-reconcile")
	return res
}

// seconds formats a list of seconds to the hundredth.
func seconds(xs []float64) string {
	f := make([]string, len(xs))
	for i, x := range xs {
		f[i] = strconv.FormatFloat(x, 'f', 2, 64)
	}
	return strings.Join(f, " ")
}

// coldStarts is how many cold starts a peer count's figures are the
// median of: OVERLAYD_BENCH_COLD_STARTS, else 3.
func coldStarts(b *testing.B) int {
	s := os.Getenv("OVERLAYD_BENCH_COLD_STARTS")
	if s == "" {
		return 3
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		b.Fatalf("OVERLAYD_BENCH_COLD_STARTS=%q: want a count of at least 1", s)
	}
	return n
}

// coldStart stops the agent, removes its devices (and with them every
// route, neighbour and FDB entry through them), starts it and returns the
// seconds to its first route and to every entry of size peers, of each
// family, and the CPU seconds the agent used until then: unlike the wall
// time, barely moved by other load on the machine. With profile set, the
// agent's CPU profile of its first seconds is summarised there (and kept
// in the results directory).
func coldStart(b *testing.B, c *cluster, node *lab.Node, dual bool, size int, profile *string) (first, all, cpu float64) {
	if p := c.Agents[node.Name]; p != nil && p.Running() {
		if err := p.Stop(); err != nil && p.Running() {
			b.Fatal(err)
		}
	}
	for _, dev := range vxlanDevs {
		if err := deleteLink(node, dev); err != nil {
			b.Fatal(err)
		}
	}
	if k, err := countKernel(node, true); err != nil || k != (kernelCounts{dual: true}) {
		b.Fatalf("kernel not clean before the cold start: %v %v", k, err)
	}
	want := wantCounts(size, dual)
	start := time.Now()
	agent := c.startAgent(node)
	var profiled chan struct{}
	var profileErr error
	if profile != nil {
		profiled = make(chan struct{})
		go func() {
			defer close(profiled)
			*profile, profileErr = cpuProfile(interrupted, node, coldStartProfile, fmt.Sprintf("coldstart-%d-%s.pb.gz", size, map[bool]string{false: "ipv4", true: "dual"}[dual]))
		}()
	}
	var firstAt time.Time
	var last kernelCounts
	waitFor(b, 5*time.Minute, fmt.Sprintf("%d peers programmed", size), func() (bool, string) {
		if !agent.Running() {
			b.Fatalf("overlayd exited: %v\n%s", agent.ExitErr(), agent.Tail(3000))
		}
		k, err := countKernel(node, dual)
		if err != nil {
			b.Fatal(err)
		}
		if k.ipv4.routes+k.ipv6.routes > 0 && firstAt.IsZero() {
			firstAt = time.Now()
		}
		last = k
		return k == want, k.String()
	})
	first, all = firstAt.Sub(start).Seconds(), time.Since(start).Seconds()
	cpu, err := harness.ProcessCPUSeconds(agent.Pid())
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("cold start with %d peers: first route after %.2f s, all %s after %.2f s, agent CPU %.2f s", size, first, last, all, cpu)
	if profiled != nil {
		<-profiled
		if profileErr != nil {
			b.Fatal(profileErr)
		}
		b.Logf("CPU profile of the cold start's first %s:\n%s", coldStartProfile, *profile)
	}
	return first, all, cpu
}

// quietWindow lets a few reconciles run with no change anywhere (nothing
// polls the agent meanwhile) and takes their mean duration, the agent's CPU
// share and its memory.
func quietWindow(b *testing.B, c *cluster, node *lab.Node, res *ConvergenceSize) {
	const window = 3*convergenceResync + convergenceResync/2
	agent := c.Agents[node.Name]
	const sum, count = "overlayd_reconcile_duration_seconds_sum", "overlayd_reconcile_duration_seconds_count"
	m0 := c.metrics(node)
	cpu0, err := harness.ProcessCPUSeconds(agent.Pid())
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	pause(b, window)
	m1 := c.metrics(node)
	if m1[count]-m0[count] < 1 {
		b.Fatalf("no reconcile in %s with --resync-period %s", window, convergenceResync)
	}
	elapsed := time.Since(t0)
	cpu1, err := harness.ProcessCPUSeconds(agent.Pid())
	if err != nil {
		b.Fatal(err)
	}
	res.NoopReconciles = int(m1[count] - m0[count])
	res.NoopReconcileMs = 1000 * (m1[sum] - m0[sum]) / (m1[count] - m0[count])
	res.IdleCPUPercent = 100 * (cpu1 - cpu0) / elapsed.Seconds()
	if res.VmRSSKiB, res.VmHWMKiB, err = harness.ProcessMemory(agent.Pid()); err != nil {
		b.Fatal(err)
	}
	if res.RssAnonKiB, res.RssFileKiB, err = harness.ProcessRSSParts(agent.Pid()); err != nil {
		b.Fatal(err)
	}
	for _, kind := range []string{"route", "neigh", "fdb"} {
		key := fmt.Sprintf(`overlayd_repairs_total{kind=%q}`, kind)
		if m1[key] != m0[key] {
			b.Fatalf("the agent repaired %s entries during the quiet window: %v -> %v", kind, m0[key], m1[key])
		}
	}
	b.Logf("quiet: %d no-change reconciles of %.1f ms on average; agent CPU %.1f%%, VmRSS %.1f MiB, VmHWM %.1f MiB",
		res.NoopReconciles, res.NoopReconcileMs, res.IdleCPUPercent, float64(res.VmRSSKiB)/1024, float64(res.VmHWMKiB)/1024)
	if res.Heap, err = heapProfile(interrupted, node); err != nil {
		b.Fatal(err)
	}
	b.Logf("heap in use after the quiet window: %.1f MiB\n%s", res.Heap.InuseMiB, res.Heap.Top)
}

// warmRestart stops the agent and starts it again with everything in place,
// and counts the kernel changes the new agent makes until it is ready and
// one more resync period has passed.
func warmRestart(b *testing.B, c *cluster, node *lab.Node, w *kernelWatch, res *ConvergenceSize) {
	agent := c.Agents[node.Name]
	if err := agent.Stop(); err != nil {
		b.Fatalf("stopping the agent: %v", err)
	}
	drain(w)
	start := time.Now()
	c.startAgent(node)
	ready := c.waitReady(node, time.Minute)
	res.WarmRestartSec = ready.Sub(start).Seconds()
	pause(b, convergenceResync) // let a resync pass run before counting
	res.WarmRestartDiff = drain(w)
	b.Logf("warm restart: ready after %.2f s, %d kernel route/neighbour/FDB changes", res.WarmRestartSec, res.WarmRestartDiff)
}

// drain empties the watch and returns how many route, neighbour and FDB
// changes it held.
func drain(w *kernelWatch) int {
	n := 0
	for {
		select {
		case u := <-w.routes:
			if u.Protocol == kernel.RouteProtocol {
				n++
			}
		case u := <-w.neighs:
			if u.State&netlink.NUD_PERMANENT != 0 {
				n++
			}
		default:
			return n
		}
	}
}

// churnOnce creates peer i, waits until the kernel has its entries, deletes
// it and waits until they are gone.
func churnOnce(b *testing.B, admin kubernetes.Interface, peers *peerSet, w *kernelWatch, i int) (add, del time.Duration) {
	ctx, cancel := context.WithTimeout(interrupted, time.Minute)
	defer cancel()
	node, entries := peers.node(i)
	drain(w)
	start := time.Now()
	if _, err := admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		b.Fatalf("creating %s: %v", node.Name, err)
	}
	at, err := w.wait(ctx, entries, true)
	if err != nil {
		b.Fatalf("new peer %s: %v", node.Name, err)
	}
	add = at.Sub(start)
	start = time.Now()
	if err := admin.CoreV1().Nodes().Delete(ctx, node.Name, metav1.DeleteOptions{}); err != nil {
		b.Fatalf("deleting %s: %v", node.Name, err)
	}
	if at, err = w.wait(ctx, entries, false); err != nil {
		b.Fatalf("deleted peer %s: %v", node.Name, err)
	}
	return add, at.Sub(start)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// peerSet creates peer Nodes as their agents would have left them.
type peerSet struct {
	admin     kubernetes.Interface
	network   netip.Prefix
	subnetLen int
	// dual: every peer is dual-stack, with a subnet of network6 too.
	dual       bool
	network6   netip.Prefix
	subnetLen6 int
	created    int // peers 0..created-1 exist
	// prefix is the annotations' prefix; kube.DefaultAnnotationPrefix
	// when empty.
	prefix string
}

// ensure creates peers up to count, 32 at a time, and returns how many it
// created.
func (s *peerSet) ensure(b *testing.B, count int) int {
	from := s.created
	g, ctx := errgroup.WithContext(interrupted)
	g.SetLimit(32)
	for i := from; i < count; i++ {
		g.Go(func() error {
			node, _ := s.node(i)
			if _, err := s.admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
				return fmt.Errorf("creating %s: %w", node.Name, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	s.created = max(s.created, count)
	return max(0, count-from)
}

// node returns peer i's Node and the kernel entries it calls for. Its
// public address is 198.18.16.0 + i: for every i used (below 61440) in
// 198.18.16.0-198.18.255.255, clear of the lab's underlay segments; a
// dual-stack peer's IPv6 one is fd00:198:18::1:0 + 4096 + i, clear of the
// lab's addresses on segment 0 likewise.
func (s *peerSet) node(i int) (*corev1.Node, peerEntries) {
	name := fmt.Sprintf("peer-%05d", i)
	sub, err := ip.NthSubnet(s.network, s.subnetLen, uint64(peerSubnetBase+i))
	if err != nil {
		panic(fmt.Sprintf("peer %d: %v", i, err)) // the constants leave room for every i used
	}
	off := 16*256 + i
	public := netip.AddrFrom4([4]byte{198, 18 + byte(off>>16), byte(off >> 8), byte(off)})
	mac := net.HardwareAddr{0x0a, 0x58, byte(i >> 16), byte(i >> 8), byte(i), 0x7e}
	k := kube.DefaultAnnotationPrefix + "/"
	if s.prefix != "" {
		k = s.prefix + "/"
	}
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: name,
			Labels: map[string]string{
				"kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux", "kubernetes.io/hostname": name,
				"node.kubernetes.io/instance-type": "m6i.2xlarge",
				"topology.kubernetes.io/region":    "eu-west-1",
				"topology.kubernetes.io/zone":      fmt.Sprintf("eu-west-1%c", 'a'+i%3),
			},
			Annotations: map[string]string{
				"node.alpha.kubernetes.io/ttl":                           "0",
				"volumes.kubernetes.io/controller-managed-attach-detach": "true",
				k + "kube-subnet-manager":                                "true",
				k + "backend-type":                                       "vxlan",
				k + "backend-data":                                       fmt.Sprintf(`{"VNI":1,"VtepMAC":%q}`, mac),
				k + "public-ip":                                          public.String(),
			},
		},
		Spec: corev1.NodeSpec{PodCIDR: sub.String(), PodCIDRs: []string{sub.String()}},
	}
	entries := peerEntries{{subnet: sub, vtep: sub.Addr(), vtepMAC: mac, publicIP: public}}
	addresses := []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: public.String()}}
	if s.dual {
		sub6, err := ip.NthSubnet(s.network6, s.subnetLen6, uint64(peerSubnetBase+i))
		if err != nil {
			panic(fmt.Sprintf("peer %d: %v", i, err))
		}
		a := lab.Segment0v6.Addr().As16()
		a[12], a[13], a[14], a[15] = 0, 1, byte(off>>8), byte(off) // off < 65536 for every i used
		public6 := netip.AddrFrom16(a)
		mac6 := net.HardwareAddr{0x0a, 0x58, byte(i >> 16), byte(i >> 8), byte(i), 0x6e}
		n.Annotations[k+"backend-v6-data"] = fmt.Sprintf(`{"VNI":1,"VtepMAC":%q}`, mac6)
		n.Annotations[k+"public-ipv6"] = public6.String()
		n.Spec.PodCIDRs = append(n.Spec.PodCIDRs, sub6.String())
		entries = append(entries, familyEntries{subnet: sub6, vtep: sub6.Addr(), vtepMAC: mac6, publicIP: public6})
		addresses = append(addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: public6.String()})
	}
	n.Status.Addresses = append(addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: name})
	// The bulk of a real Node: what its kubelet reports.
	q := resource.MustParse
	n.Status.Capacity = corev1.ResourceList{"cpu": q("8"), "memory": q("32408232Ki"), "pods": q("110"), "ephemeral-storage": q("101430960Ki")}
	n.Status.Allocatable = corev1.ResourceList{"cpu": q("7910m"), "memory": q("31391400Ki"), "pods": q("110"), "ephemeral-storage": q("92936802Ki")}
	now := metav1.Now()
	for _, t := range []string{"MemoryPressure", "DiskPressure", "PIDPressure", "Ready"} {
		status := corev1.ConditionFalse
		if t == "Ready" {
			status = corev1.ConditionTrue
		}
		n.Status.Conditions = append(n.Status.Conditions, corev1.NodeCondition{
			Type: corev1.NodeConditionType(t), Status: status, Reason: "Kubelet" + t, Message: "reported by the kubelet",
			LastHeartbeatTime: now, LastTransitionTime: now,
		})
	}
	n.Status.NodeInfo = corev1.NodeSystemInfo{
		MachineID: fmt.Sprintf("%032x", i), SystemUUID: fmt.Sprintf("%032x", i+1), BootID: fmt.Sprintf("%032x", i+2),
		KernelVersion: "6.1.0-27-amd64", OSImage: "Debian GNU/Linux 12 (bookworm)", ContainerRuntimeVersion: "containerd://1.7.20",
		KubeletVersion: "v1.36.3", OperatingSystem: "linux", Architecture: "amd64",
	}
	for j := range 40 {
		repo := fmt.Sprintf("registry.example.com/team-%d/service-%02d", j%7, j)
		n.Status.Images = append(n.Status.Images, corev1.ContainerImage{
			Names:     []string{fmt.Sprintf("%s@sha256:%064x", repo, j*7919+1), fmt.Sprintf("%s:v1.%d", repo, j)},
			SizeBytes: int64(20_000_000 + j*1_234_567),
		})
	}
	return n, entries
}
