package kube

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	coordv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/overlayd/overlayd/subnet"
	"github.com/overlayd/overlayd/test/controlplane"
)

func createNamespace(t *testing.T, c *cluster, name string) {
	t.Helper()
	_, err := c.admin.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

func getLease(t *testing.T, c *cluster, ns string, p netip.Prefix) *coordv1.Lease {
	t.Helper()
	l, err := c.admin.CoordinationV1().Leases(ns).Get(context.Background(), leaseName(p), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("getting the Lease of %s: %v", p, err)
	}
	return l
}

// TestLeaseMode runs the lease-object mode against one API server with the
// garbage collector; each subtest has its own lease namespace.
func TestLeaseMode(t *testing.T) {
	t.Parallel()
	c := startCluster(t, controlplane.Options{ControllerManager: true})
	ctx := context.Background()

	t.Run("50 agents never share a subnet", func(t *testing.T) {
		const ns, n = "lease-50", 50
		createNamespace(t, c, ns)
		// Exactly 50 subnets for 50 agents: every one must end up used once.
		net := mustNet(t, `{"Network": "10.250.0.0/16", "SubnetMin": "10.250.1.0", "SubnetMax": "10.250.50.0", "LeaseMode": "lease"}`)
		var names []string
		for i := range n {
			names = append(names, fmt.Sprintf("agent-%02d", i))
		}
		nodes := createNodes(t, c.admin, names)
		agents := map[string]*agent{}
		for _, name := range names {
			agents[name] = startAgent(t, Config{Client: c.admin, NodeName: name, Net: net, LeaseNamespace: ns})
		}
		var mu sync.Mutex
		got := map[string]subnet.Lease{}
		var errs []error
		var wg sync.WaitGroup
		for i, name := range names {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(ctx, time.Minute)
				defer cancel()
				l, err := agents[name].Acquire(ctx, vxlanAttrs(fmt.Sprintf("198.18.1.%d", i+1), fmt.Sprintf("0a:58:0a:fa:%02x:01", i)))
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", name, err))
				}
				got[name] = l
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}

		bySubnet := map[netip.Prefix]string{}
		for name, l := range got {
			if other, dup := bySubnet[l.Subnet]; dup {
				t.Errorf("%s and %s both hold %s", name, other, l.Subnet)
			}
			bySubnet[l.Subnet] = name
			if l.Subnet.Bits() != 24 || l.Subnet.Addr().Compare(netip.MustParseAddr("10.250.1.0")) < 0 || l.Subnet.Addr().Compare(netip.MustParseAddr("10.250.50.0")) > 0 {
				t.Errorf("%s got %s, outside SubnetMin..SubnetMax", name, l.Subnet)
			}
		}
		if len(bySubnet) != n {
			t.Fatalf("%d distinct subnets for %d agents", len(bySubnet), n)
		}
		// The API server agrees: one Lease per subnet, held by its agent,
		// owned by its Node.
		list, err := c.admin.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != n {
			t.Errorf("%d Leases, want %d", len(list.Items), n)
		}
		for _, le := range list.Items {
			holder := ptr.Deref(le.Spec.HolderIdentity, "")
			p := got[holder].Subnet
			if le.Name != leaseName(p) || le.Annotations["overlayd.io/subnet"] != p.String() || le.Labels["overlayd.io/subnet-lease"] != "ipv4" {
				t.Errorf("Lease %s held by %s: want it to stand for %s; annotations %v labels %v", le.Name, holder, p, le.Annotations, le.Labels)
			}
			refs := le.OwnerReferences
			if len(refs) != 1 || refs[0].Kind != "Node" || refs[0].Name != holder || refs[0].UID != nodes[holder].UID {
				t.Errorf("Lease %s owner references %+v, want Node %s", le.Name, refs, holder)
			}
		}
		// And every agent's snapshot has the 49 others, exactly as acquired.
		for _, name := range names {
			want := maps.Clone(got)
			delete(want, name)
			waitFor(t, name+"'s snapshot of 49 peers", func() (bool, string) {
				peers := agents[name].peerMap()
				return maps.EqualFunc(peers, want, leaseEqual), fmt.Sprintf("%d peers", len(peers))
			})
		}
	})

	t.Run("expiry and takeover", func(t *testing.T) {
		const ns = "lease-expiry"
		createNamespace(t, c, ns)
		// One subnet only, with short leases.
		net := mustNet(t, `{"Network": "10.251.0.0/16", "SubnetMin": "10.251.7.0", "SubnetMax": "10.251.7.0", "LeaseMode": "lease"}`)
		createNodes(t, c.admin, []string{"old", "taker-1", "taker-2"})
		cfg := func(node string) Config {
			return Config{Client: c.admin, NodeName: node, Net: net, LeaseNamespace: ns, LeaseDuration: 2 * time.Second}
		}
		old := startAgent(t, cfg("old"))
		oldLease := old.acquire(t, vxlanAttrs("198.18.2.1", "0a:58:0a:fb:07:01"))
		old.stop() // dies: no more renewals
		held := getLease(t, c, ns, oldLease.Subnet)

		type result struct {
			node  string
			lease subnet.Lease
			err   error
		}
		results := make(chan result, 2)
		takers := map[string]*agent{}
		acquireCtx, cancelAcquire := context.WithCancel(ctx)
		defer cancelAcquire()
		for i, node := range []string{"taker-1", "taker-2"} {
			taker := startAgent(t, cfg(node))
			takers[node] = taker
			go func() {
				l, err := taker.Acquire(acquireCtx, vxlanAttrs(fmt.Sprintf("198.18.2.%d", i+2), "0a:58:0a:fb:07:02"))
				results <- result{node, l, err}
			}()
		}
		// Both wait while the lease is valid; one takes it once expired.
		var first result
		select {
		case first = <-results:
		case <-time.After(30 * time.Second):
			t.Fatal("no taker got the expired lease")
		}
		if first.err != nil {
			t.Fatalf("%s: %v", first.node, first.err)
		}
		if first.lease.Subnet != oldLease.Subnet {
			t.Errorf("%s took %s, want %s", first.node, first.lease.Subnet, oldLease.Subnet)
		}
		le := getLease(t, c, ns, oldLease.Subnet)
		if h := ptr.Deref(le.Spec.HolderIdentity, ""); h != first.node || ptr.Deref(le.Spec.LeaseTransitions, 0) != 1 || le.UID != held.UID {
			t.Errorf("Lease after takeover: holder %q transitions %d uid %s; want %s, 1, the same object", h, ptr.Deref(le.Spec.LeaseTransitions, 0), le.UID, first.node)
		}
		if expired := held.Spec.RenewTime.Add(2 * time.Second); le.Spec.AcquireTime.Time.Before(expired) {
			t.Errorf("taken over at %s, before the old lease expired at %s", le.Spec.AcquireTime.Time, expired)
		}
		if refs := le.OwnerReferences; len(refs) != 1 || refs[0].Name != first.node {
			t.Errorf("owner references %+v after takeover, want the taker's Node", refs)
		}
		for _, node := range []string{"taker-1", "taker-2"} {
			if node != first.node && len(takers[node].logs.FilterMessageSnippet("no free subnet").All()) == 0 {
				t.Errorf("the losing taker %s never said it was waiting for a subnet", node)
			}
		}
		// The other taker, still waiting (the winner renews), gives up.
		cancelAcquire()
		second := <-results
		if second.err == nil || !errors.Is(second.err, context.Canceled) {
			t.Errorf("%s: got %+v, %v; want it still waiting when cancelled", second.node, second.lease, second.err)
		}
	})

	t.Run("restart keeps the subnet; a lost lease stops Run", func(t *testing.T) {
		const ns = "lease-restart"
		createNamespace(t, c, ns)
		net := mustNet(t, `{"Network": "10.252.0.0/16", "LeaseMode": "lease"}`)
		createNodes(t, c.admin, []string{"r1", "r2"})
		cfg := Config{Client: c.admin, NodeName: "r1", Net: net, LeaseNamespace: ns, LeaseDuration: 3 * time.Second}
		attrs := vxlanAttrs("198.18.3.1", "0a:58:0a:fc:00:01")
		a := startAgent(t, cfg)
		first := a.acquire(t, attrs)
		before := getLease(t, c, ns, first.Subnet)
		a.stop()

		// A Lease whose name does not match its subnet is refused, not a lock.
		bogus := &coordv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "subnet-bogus", Namespace: ns,
			Labels:      map[string]string{"overlayd.io/subnet-lease": "ipv4"},
			Annotations: map[string]string{"overlayd.io/subnet": first.Subnet.String()}},
			Spec: coordv1.LeaseSpec{HolderIdentity: ptr.To("r2")}}
		if _, err := c.admin.CoordinationV1().Leases(ns).Create(ctx, bogus, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}

		a = startAgent(t, cfg)
		again := a.acquire(t, attrs)
		after := getLease(t, c, ns, again.Subnet)
		if again.Subnet != first.Subnet || after.UID != before.UID || ptr.Deref(after.Spec.LeaseTransitions, 0) != 0 {
			t.Errorf("after restart: %s (Lease uid %s, transitions %d); want %s, the same Lease, 0 transitions",
				again.Subnet, after.UID, ptr.Deref(after.Spec.LeaseTransitions, 0), first.Subnet)
		}
		waitFor(t, "the bogus Lease to be refused", func() (bool, string) {
			l := skipLogs(a, "r2")
			return len(l) == 1 && l[0].ContextMap()["reason"] == reasonMalformedSubnet, fmt.Sprintf("%d log lines", len(l))
		})

		// Another agent gets another subnet.
		other := startAgent(t, Config{Client: c.admin, NodeName: "r2", Net: net, LeaseNamespace: ns})
		if l := other.acquire(t, vxlanAttrs("198.18.3.2", "0a:58:0a:fc:00:02")); l.Subnet == first.Subnet {
			t.Errorf("r2 got r1's subnet %s", l.Subnet)
		}

		// Publish travels on the Lease.
		attrs2 := vxlanAttrs("198.18.3.11", "0a:58:0a:fc:00:11")
		if err := a.Publish(ctx, attrs2); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "r2 to see r1's new attributes", func() (bool, string) {
			p := other.peerMap()["r1"]
			return attrsEqual(p.Attrs, attrs2), formatPeers(other.peerMap())
		})

		// A deleted own Lease is created again.
		if err := c.admin.CoordinationV1().Leases(ns).Delete(ctx, leaseName(first.Subnet), metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "r1 to recreate its Lease", func() (bool, string) {
			l, err := c.admin.CoordinationV1().Leases(ns).Get(ctx, leaseName(first.Subnet), metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			return ptr.Deref(l.Spec.HolderIdentity, "") == "r1" && l.UID != before.UID, "not yet"
		})

		// Another holder written over r1's Lease: r1's Run stops with a clear error.
		waitFor(t, "the intruder's write", func() (bool, string) {
			l := getLease(t, c, ns, first.Subnet)
			l.Spec.HolderIdentity = ptr.To("intruder")
			_, err := c.admin.CoordinationV1().Leases(ns).Update(ctx, l, metav1.UpdateOptions{})
			return err == nil, fmt.Sprint(err) // a conflict with r1's renewal: again
		})
		err := a.runError(t)
		if err == nil || !strings.Contains(err.Error(), `is now held by "intruder"`) {
			t.Errorf("Run after losing the lease: %v", err)
		}
	})

	t.Run("the Lease goes with its Node", func(t *testing.T) {
		const ns = "lease-gc"
		createNamespace(t, c, ns)
		net := mustNet(t, `{"Network": "10.253.0.0/16", "LeaseMode": "lease"}`)
		createNodes(t, c.admin, []string{"gc-node"})
		a := startAgent(t, Config{Client: c.admin, NodeName: "gc-node", Net: net, LeaseNamespace: ns})
		l := a.acquire(t, vxlanAttrs("198.18.4.1", "0a:58:0a:fd:00:01"))
		a.stop()
		getLease(t, c, ns, l.Subnet)
		if err := c.admin.CoreV1().Nodes().Delete(ctx, "gc-node", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the garbage collector to delete the Lease", func() (bool, string) {
			_, err := c.admin.CoordinationV1().Leases(ns).Get(ctx, leaseName(l.Subnet), metav1.GetOptions{})
			return apierrors.IsNotFound(err), fmt.Sprint(err)
		})
	})

	t.Run("dual stack", func(t *testing.T) {
		const ns = "lease-dual"
		createNamespace(t, c, ns)
		net := mustNet(t, `{"Network": "10.254.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:254::/56", "LeaseMode": "lease"}`)
		names := []string{"d1", "d2", "d3"}
		createNodes(t, c.admin, names)
		got := map[string]subnet.Lease{}
		agents := map[string]*agent{}
		for i, name := range names {
			agents[name] = startAgent(t, Config{Client: c.admin, NodeName: name, Net: net, LeaseNamespace: ns})
			attrs := vxlanAttrs(fmt.Sprintf("198.18.5.%d", i+1), fmt.Sprintf("0a:58:0a:fe:%02x:01", i))
			attrs.PublicIPv6 = netip.MustParseAddr(fmt.Sprintf("2001:db8::5:%d", i+1))
			attrs.BackendV6Data = []byte(fmt.Sprintf(`{"VNI":1,"VtepMAC":"0a:58:0a:fe:%02x:06"}`, i))
			got[name] = agents[name].acquire(t, attrs)
		}
		seen4, seen6 := map[netip.Prefix]bool{}, map[netip.Prefix]bool{}
		for name, l := range got {
			if !l.Subnet.IsValid() || !l.IPv6Subnet.IsValid() || l.IPv6Subnet.Bits() != 64 || seen4[l.Subnet] || seen6[l.IPv6Subnet] {
				t.Errorf("%s: lease %+v; want distinct IPv4 and IPv6 subnets", name, l)
			}
			seen4[l.Subnet], seen6[l.IPv6Subnet] = true, true
			le := getLease(t, c, ns, l.IPv6Subnet)
			if le.Labels["overlayd.io/subnet-lease"] != "ipv6" || ptr.Deref(le.Spec.HolderIdentity, "") != name {
				t.Errorf("IPv6 Lease %s: labels %v holder %q", le.Name, le.Labels, ptr.Deref(le.Spec.HolderIdentity, ""))
			}
		}
		for _, name := range names {
			want := maps.Clone(got)
			delete(want, name)
			waitFor(t, name+"'s dual-stack snapshot", func() (bool, string) {
				peers := agents[name].peerMap()
				return maps.EqualFunc(peers, want, leaseEqual), formatPeers(peers)
			})
		}
	})
}
