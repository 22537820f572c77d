package kube

import (
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
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/test/controlplane"
)

// The benchmark measures the lease store alone at scale: the time from
// start to a complete peer snapshot, and the memory of a process that runs
// nothing but the lease store (internal/snapshotprobe, built here).
//
//	go test -run '^$' -bench Snapshot -benchtime 3x -timeout 30m ./subnet/kube/
//
// OVERLAYD_BENCH_NODES changes the node count (default 5000).

const benchNetConf = `{"Network": "10.0.0.0/8"}`

func BenchmarkSnapshot(b *testing.B) {
	nodes := 5000
	if s := os.Getenv("OVERLAYD_BENCH_NODES"); s != "" {
		var err error
		if nodes, err = strconv.Atoi(s); err != nil {
			b.Fatalf("OVERLAYD_BENCH_NODES=%q: %v", s, err)
		}
	}
	probe := filepath.Join(b.TempDir(), "snapshotprobe")
	build := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", probe, "./internal/snapshotprobe")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("building the probe: %v\n%s", err, out)
	}

	c := startCluster(b, controlplane.Options{})
	start := time.Now()
	jsonSize, protoSize := createRealisticNodes(b, c.admin, nodes)
	b.Logf("created %d nodes in %s (each %.1f KiB as JSON, %.1f KiB as protobuf, before the server adds managed fields)",
		nodes, time.Since(start).Round(time.Millisecond), float64(jsonSize)/1024, float64(protoSize)/1024)
	kubeconfig := filepath.Join(b.TempDir(), "kubeconfig")
	if err := c.cp.WriteKubeconfig(kubeconfig, controlplane.Admin); err != nil {
		b.Fatal(err)
	}

	var snapshotMs float64
	var rss, hwm int64
	runs := 0
	for b.Loop() {
		r := runProbe(b, probe, kubeconfig, nodes)
		if r.Peers != nodes-1 {
			b.Fatalf("probe saw %d peers, want %d", r.Peers, nodes-1)
		}
		b.Logf("complete snapshot of %d peers in %.0f ms; VmRSS %.1f MiB (anon %.1f + file %.1f), VmHWM %.1f MiB; %.1f MiB at process start; live Go heap %.1f MiB",
			r.Peers, r.SnapshotMs, mib(r.VmRSS), mib(r.RssAnon), mib(r.RssFile), mib(r.VmHWM), mib(r.StartVmRSS), mib(int64(r.HeapLiveKiB)))
		snapshotMs += r.SnapshotMs
		rss, hwm = max(rss, r.VmRSS), max(hwm, r.VmHWM)
		runs++
	}
	b.ReportMetric(snapshotMs/float64(runs), "ms/snapshot")
	b.ReportMetric(mib(rss), "MiB-RSS")
	b.ReportMetric(mib(hwm), "MiB-peakRSS")
	b.ReportMetric(float64(nodes), "nodes")
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

// probeResult is internal/snapshotprobe's output.
type probeResult struct {
	Peers                          int
	SnapshotMs                     float64
	VmRSS, VmHWM, RssAnon, RssFile int64
	StartVmRSS                     int64
	HeapLiveKiB                    uint64
	Error                          string
}

func runProbe(b *testing.B, probe, kubeconfig string, nodes int) probeResult {
	b.Helper()
	cmd := exec.Command(probe)
	cmd.Env = append(os.Environ(),
		"OVERLAYD_PROBE_KUBECONFIG="+kubeconfig,
		"OVERLAYD_PROBE_NODE="+benchNodeName(0),
		"OVERLAYD_PROBE_PEERS="+strconv.Itoa(nodes-1),
		"OVERLAYD_PROBE_NETCONF="+benchNetConf)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var r probeResult
	if jerr := json.Unmarshal(bytes.TrimSpace(out), &r); jerr != nil || err != nil || r.Error != "" {
		b.Fatalf("probe: %v %v %s\nstdout: %s\nstderr: %s", err, jerr, r.Error, out, stderr.Bytes())
	}
	return r
}

func benchNodeName(i int) string { return fmt.Sprintf("node-%05d.cluster.example.internal", i) }

// createRealisticNodes creates n Nodes the size of real ones (status with
// images, conditions, node info; our annotations and a podCIDR), in
// parallel, and returns one node's JSON and protobuf size.
func createRealisticNodes(b testing.TB, c kubernetes.Interface, n int) (jsonSize, protoSize int) {
	b.Helper()
	network := netip.MustParsePrefix("10.0.0.0/8")
	sample := realisticNode(0, network)
	js, _ := json.Marshal(sample)
	pb, _ := sample.Marshal()

	g, ctx := errgroup.WithContext(context.Background())
	g.SetLimit(32)
	for i := range n {
		g.Go(func() error {
			if _, err := c.CoreV1().Nodes().Create(ctx, realisticNode(i, network), metav1.CreateOptions{}); err != nil {
				return fmt.Errorf("creating node %d: %w", i, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
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
				fmt.Sprintf("mirror.%s@sha256:%064x", repo, j*7919+1),
				fmt.Sprintf("%s:v1.%d.%d", repo, j, i%10),
			},
			SizeBytes: int64(20_000_000 + j*1_234_567),
		})
	}
	return node
}
