package kube

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/pkg/metrics"
	"github.com/overlayd/overlayd/subnet"
	"github.com/overlayd/overlayd/test/controlplane"
)

// cluster is a real etcd + kube-apiserver for one test.
type cluster struct {
	cp    *controlplane.ControlPlane
	admin kubernetes.Interface
}

func startCluster(t testing.TB, opts controlplane.Options) *cluster {
	t.Helper()
	cp := controlplane.StartT(t, opts)
	return &cluster{cp: cp, admin: clientFor(t, cp, controlplane.Admin)}
}

// clientFor is a protobuf client authenticating as identity.
func clientFor(t testing.TB, cp *controlplane.ControlPlane, identity string) kubernetes.Interface {
	t.Helper()
	c, err := NewClient(UseProtobuf(cp.Config(identity)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustNet(t testing.TB, conf string) *netconf.Config {
	t.Helper()
	c, err := netconf.Parse([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// agent is a running lease store, as the daemon runs it.
type agent struct {
	*manager
	logs   *observer.ObservedLogs
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Run's result, once done is closed
}

// startAgent runs the lease store until stopped or the test ends.
func startAgent(t testing.TB, cfg Config) *agent {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	cfg.Log = zap.New(zapcore.NewTee(core, zaptest.NewLogger(t, zaptest.Level(zapcore.InfoLevel)).Core())).Named(cfg.NodeName)
	ctx, cancel := context.WithCancel(context.Background())
	if cfg.Events == nil { // as the daemon wires it
		cfg.Events = NewEvents(ctx, cfg.Client, cfg.NodeName)
	}
	m, err := newManager(cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	a := &agent{manager: m, logs: logs, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		a.err = m.Run(ctx)
	}()
	t.Cleanup(a.stop)
	return a
}

// stop ends Run and waits for it, so nothing of the agent outlives a test.
func (a *agent) stop() {
	a.cancel()
	<-a.done
}

// runError waits for Run to return on its own.
func (a *agent) runError(t testing.TB) error {
	t.Helper()
	select {
	case <-a.done:
		return a.err
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return")
		return nil
	}
}

func (a *agent) acquire(t testing.TB, attrs subnet.LeaseAttrs) subnet.Lease {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := a.Acquire(ctx, attrs)
	if err != nil {
		t.Fatalf("%s: Acquire: %v", a.cfg.NodeName, err)
	}
	return l
}

// peerMap returns the synced snapshot by node name; nil before sync.
func (a *agent) peerMap() map[string]subnet.Lease {
	peers, synced := a.Peers()
	if !synced {
		return nil
	}
	out := map[string]subnet.Lease{}
	for _, p := range peers {
		out[p.Node] = p
	}
	return out
}

// waitFor polls cond until it holds; on timeout it fails with cond's last word.
func waitFor(t testing.TB, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s", what, detail)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func vxlanAttrs(publicIP, mac string) subnet.LeaseAttrs {
	return subnet.LeaseAttrs{
		PublicIP:    netip.MustParseAddr(publicIP),
		BackendType: "vxlan",
		BackendData: []byte(fmt.Sprintf(`{"VNI":1,"VtepMAC":%q}`, mac)),
	}
}

// createNode creates a Node; podCIDRs may be empty (kube-controller-manager
// or the test assigns them later).
func createNode(t testing.TB, c kubernetes.Interface, name string, podCIDRs []string, annotations map[string]string) *corev1.Node {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations}}
	if len(podCIDRs) > 0 {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = podCIDRs[0], podCIDRs
	}
	got, err := c.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating node %s: %v", name, err)
	}
	return got
}

// createNodes creates many nodes in parallel.
func createNodes(t testing.TB, c kubernetes.Interface, names []string) map[string]*corev1.Node {
	t.Helper()
	var mu sync.Mutex
	out := map[string]*corev1.Node{}
	var errs []error
	var wg sync.WaitGroup
	for _, name := range names {
		wg.Go(func() {
			n, err := c.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			out[name] = n
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("creating nodes: %v", err)
	}
	return out
}

// skippedCount reads overlayd_peers_skipped_total{reason}.
func skippedCount(t testing.TB, reason string) float64 {
	t.Helper()
	var m dto.Metric
	if err := metrics.PeersSkipped.WithLabelValues(reason).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// resolveCount is overlayd_lease_resolves_total of scope.
func resolveCount(t testing.TB, scope string) float64 {
	t.Helper()
	var m dto.Metric
	if err := resolves.WithLabelValues(scope).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// skipLogs returns the "skipping peer" lines an agent logged about a peer.
func skipLogs(a *agent, peer string) []observer.LoggedEntry {
	return a.logs.FilterMessageSnippet("skipping peer").FilterField(zap.String("peer", peer)).All()
}

// nodeEvents lists the Events recorded on a node with a reason.
func nodeEvents(t testing.TB, c kubernetes.Interface, node, reason string) []corev1.Event {
	t.Helper()
	list, err := c.CoreV1().Events(metav1.NamespaceDefault).List(context.Background(), metav1.ListOptions{
		FieldSelector: "involvedObject.kind=Node,involvedObject.name=" + node + ",reason=" + reason,
	})
	if err != nil {
		t.Fatal(err)
	}
	return list.Items
}
