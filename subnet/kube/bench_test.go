package kube

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/subnet"
	"github.com/overlayd/overlayd/test/controlplane"
)

// The benchmark measures the lease store alone at scale: the time from
// start to a complete peer snapshot, and the memory of a process that runs
// only the lease store (this test binary re-executed in benchChild mode).
//
//	go test -run '^$' -bench Snapshot -benchtime 3x -timeout 30m ./subnet/kube/
//
// OVERLAYD_BENCH_NODES changes the node count (default 5000).

const (
	benchChildEnv = "OVERLAYD_KUBE_BENCH_CHILD" // set: run as the measured child
	benchNet      = `{"Network": "10.0.0.0/8"}`
)

// benchResult is what the child reports on its stdout.
type benchResult struct {
	Peers       int     `json:"peers"`
	SnapshotMs  float64 `json:"snapshotMs"`
	VmRSSKiB    int64   `json:"vmRSSKiB"`
	VmHWMKiB    int64   `json:"vmHWMKiB"`
	HeapInuseKB uint64  `json:"heapInuseKiB"`
	Error       string  `json:"error,omitempty"`
}

func BenchmarkSnapshot(b *testing.B) {
	nodes := 5000
	if s := os.Getenv("OVERLAYD_BENCH_NODES"); s != "" {
		var err error
		if nodes, err = strconv.Atoi(s); err != nil {
			b.Fatalf("OVERLAYD_BENCH_NODES=%q: %v", s, err)
		}
	}
	c := startCluster(b, controlplane.Options{})
	start := time.Now()
	jsonSize, protoSize := createRealisticNodes(b, c.admin, nodes)
	b.Logf("created %d nodes in %s (each about %.1f KiB as JSON, %.1f KiB as protobuf)",
		nodes, time.Since(start).Round(time.Millisecond), float64(jsonSize)/1024, float64(protoSize)/1024)

	kubeconfig := filepath.Join(b.TempDir(), "kubeconfig")
	if err := c.cp.WriteKubeconfig(kubeconfig, controlplane.Admin); err != nil {
		b.Fatal(err)
	}
	var sum benchResult
	runs := 0
	for b.Loop() {
		r := runBenchChild(b, kubeconfig, nodes)
		if r.Peers != nodes-1 {
			b.Fatalf("child saw %d peers, want %d", r.Peers, nodes-1)
		}
		b.Logf("snapshot of %d peers in %.0f ms; VmRSS %.1f MiB, VmHWM %.1f MiB, Go heap in use %.1f MiB",
			r.Peers, r.SnapshotMs, kib(r.VmRSSKiB), kib(r.VmHWMKiB), float64(r.HeapInuseKB)/1024)
		sum.SnapshotMs += r.SnapshotMs
		sum.VmRSSKiB = max(sum.VmRSSKiB, r.VmRSSKiB)
		sum.VmHWMKiB = max(sum.VmHWMKiB, r.VmHWMKiB)
		runs++
	}
	b.ReportMetric(sum.SnapshotMs/float64(runs), "ms/snapshot")
	b.ReportMetric(kib(sum.VmRSSKiB), "MiB-RSS")
	b.ReportMetric(kib(sum.VmHWMKiB), "MiB-peakRSS")
	b.ReportMetric(float64(nodes), "nodes")
}

func kib(k int64) float64 { return float64(k) / 1024 }

func runBenchChild(b *testing.B, kubeconfig string, nodes int) benchResult {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), benchChildEnv+"=1",
		"OVERLAYD_BENCH_KUBECONFIG="+kubeconfig, "OVERLAYD_BENCH_NODES="+strconv.Itoa(nodes))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var r benchResult
	if jerr := json.Unmarshal(lastLine(out), &r); jerr != nil || err != nil || r.Error != "" {
		b.Fatalf("bench child: %v %v %s\nstdout: %s\nstderr: %s", err, jerr, r.Error, out, stderr.Bytes())
	}
	return r
}

func lastLine(b []byte) []byte {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	return lines[len(lines)-1]
}

// benchChild runs only the lease store, as the daemon would, until its
// snapshot is complete, and reports time and memory.
func benchChild() int {
	r := measureSnapshot()
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
	return 0
}

func measureSnapshot() (r benchResult) {
	fail := func(err error) benchResult { r.Error = err.Error(); return r }
	nodes, err := strconv.Atoi(os.Getenv("OVERLAYD_BENCH_NODES"))
	if err != nil {
		return fail(err)
	}
	net, err := subnet.ParseConfig([]byte(benchNet))
	if err != nil {
		return fail(err)
	}
	start := time.Now()
	cfg, err := NewClientConfig(os.Getenv("OVERLAYD_BENCH_KUBECONFIG"), "")
	if err != nil {
		return fail(err)
	}
	client, err := NewClient(cfg)
	if err != nil {
		return fail(err)
	}
	m, err := New(Config{Client: client, NodeName: benchNodeName(0), Net: net})
	if err != nil {
		return fail(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- m.Run(ctx) }()
	timeout := time.After(5 * time.Minute)
	for {
		peers, synced := m.Peers()
		if synced && len(peers) == nodes-1 {
			r.Peers = len(peers)
			break
		}
		select {
		case <-m.Changed():
		case err := <-runErr:
			return fail(fmt.Errorf("Run: %v", err))
		case <-timeout:
			return fail(fmt.Errorf("no complete snapshot after 5 minutes: %d peers, synced %v", len(peers), synced))
		}
	}
	r.SnapshotMs = float64(time.Since(start).Microseconds()) / 1000
	r.VmRSSKiB, r.VmHWMKiB = procStatus("VmRSS"), procStatus("VmHWM")
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	r.HeapInuseKB = ms.HeapInuse / 1024
	return r
}

// procStatus reads a "kB" field of /proc/self/status.
func procStatus(field string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		name, rest, ok := strings.Cut(s.Text(), ":")
		if ok && name == field {
			v, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return v
		}
	}
	return -1
}

func benchNodeName(i int) string { return fmt.Sprintf("node-%05d.cluster.example.internal", i) }

// createRealisticNodes creates n Nodes the size of real ones (status with
// images, conditions, node info; our annotations and a podCIDR), in
// parallel, and returns one node's JSON and protobuf size.
func createRealisticNodes(b *testing.B, c kubernetes.Interface, n int) (jsonSize, protoSize int) {
	b.Helper()
	network := netip.MustParsePrefix("10.0.0.0/8")
	sample := realisticNode(0, network)
	js, _ := json.Marshal(sample)
	pb, _ := sample.Marshal()

	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range 32 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				_, err := c.CoreV1().Nodes().Create(context.Background(), realisticNode(i, network), metav1.CreateOptions{})
				if err != nil {
					mu.Lock()
					firstErr = fmt.Errorf("creating node %d: %w", i, err)
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	return len(js), len(pb)
}

func realisticNode(i int, network netip.Prefix) *corev1.Node {
	name := benchNodeName(i)
	podCIDR, _ := ip.NthSubnet(network, 24, uint64(i+1))
	hostIP := fmt.Sprintf("198.18.%d.%d", i/250, i%250+1)
	k := DefaultAnnotationPrefix + "/"
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: name,
			Labels: map[string]string{
				"beta.kubernetes.io/arch":                  "amd64",
				"beta.kubernetes.io/os":                    "linux",
				"beta.kubernetes.io/instance-type":         "m6i.2xlarge",
				"kubernetes.io/arch":                       "amd64",
				"kubernetes.io/hostname":                   name,
				"kubernetes.io/os":                         "linux",
				"node.kubernetes.io/instance-type":         "m6i.2xlarge",
				"topology.kubernetes.io/region":            "eu-west-1",
				"topology.kubernetes.io/zone":              fmt.Sprintf("eu-west-1%c", 'a'+i%3),
				"failure-domain.beta.kubernetes.io/region": "eu-west-1",
				"failure-domain.beta.kubernetes.io/zone":   fmt.Sprintf("eu-west-1%c", 'a'+i%3),
				"node.kubernetes.io/pool":                  "general-purpose",
			},
			Annotations: map[string]string{
				"kubeadm.alpha.kubernetes.io/cri-socket":                 "unix:///run/containerd/containerd.sock",
				"node.alpha.kubernetes.io/ttl":                           "0",
				"volumes.kubernetes.io/controller-managed-attach-detach": "true",
				"csi.volume.kubernetes.io/nodeid":                        fmt.Sprintf(`{"ebs.csi.aws.com":"i-%017x"}`, i),
				k + "backend-type":                                       "vxlan",
				k + "backend-data":                                       fmt.Sprintf(`{"VNI":1,"VtepMAC":"0a:58:%02x:%02x:%02x:01"}`, i>>16&0xff, i>>8&0xff, i&0xff),
				k + "public-ip":                                          hostIP,
				k + "kube-subnet-manager":                                "true",
			},
		},
		Spec: corev1.NodeSpec{
			PodCIDR:    podCIDR.String(),
			PodCIDRs:   []string{podCIDR.String()},
			ProviderID: fmt.Sprintf("aws:///eu-west-1a/i-%017x", i),
		},
	}
	q := resource.MustParse
	node.Status.Capacity = corev1.ResourceList{
		"cpu": q("8"), "memory": q("32408232Ki"), "pods": q("110"), "ephemeral-storage": q("101430960Ki"),
		"hugepages-1Gi": q("0"), "hugepages-2Mi": q("0"), "attachable-volumes-aws-ebs": q("25"),
	}
	node.Status.Allocatable = corev1.ResourceList{
		"cpu": q("7910m"), "memory": q("31391400Ki"), "pods": q("110"), "ephemeral-storage": q("92936802Ki"),
		"hugepages-1Gi": q("0"), "hugepages-2Mi": q("0"), "attachable-volumes-aws-ebs": q("25"),
	}
	now := metav1.Now()
	for _, c := range []struct{ t, s, reason, msg string }{
		{"MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"},
		{"DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"},
		{"PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"},
		{"Ready", "True", "KubeletReady", "kubelet is posting ready status"},
		{"NetworkUnavailable", "False", "OverlaydIsUp", "overlayd is running on this node"},
	} {
		node.Status.Conditions = append(node.Status.Conditions, corev1.NodeCondition{
			Type: corev1.NodeConditionType(c.t), Status: corev1.ConditionStatus(c.s), Reason: c.reason, Message: c.msg,
			LastHeartbeatTime: now, LastTransitionTime: now,
		})
	}
	node.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: hostIP},
		{Type: corev1.NodeHostName, Address: name},
		{Type: corev1.NodeInternalDNS, Address: name},
	}
	node.Status.DaemonEndpoints.KubeletEndpoint.Port = 10250
	node.Status.NodeInfo = corev1.NodeSystemInfo{
		MachineID: fmt.Sprintf("ec2%029x", i), SystemUUID: fmt.Sprintf("ec2%05x-1b2c-3d4e-5f60-718293a4b5c6", i),
		BootID: fmt.Sprintf("%08x-aaaa-bbbb-cccc-dddddddddddd", i), KernelVersion: "6.1.102-111.182.amzn2023.x86_64",
		OSImage: "Amazon Linux 2023.5.20240819", ContainerRuntimeVersion: "containerd://1.7.20",
		KubeletVersion: "v1.36.3", OperatingSystem: "linux", Architecture: "amd64",
	}
	for j := range 40 {
		repo := fmt.Sprintf("registry.example.com/platform/team-%02d/service-%02d", j%7, j)
		node.Status.Images = append(node.Status.Images, corev1.ContainerImage{
			Names: []string{
				fmt.Sprintf("%s@sha256:%064x", repo, j*7919+1),
				fmt.Sprintf("%s:v1.%d.%d", repo, j, i%10),
			},
			SizeBytes: int64(20_000_000 + j*1_234_567),
		})
	}
	return node
}
