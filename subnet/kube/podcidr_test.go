package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/overlayd/overlayd/subnet"
	"github.com/overlayd/overlayd/test/controlplane"
)

// ourAnnotations returns a node's annotations under prefix.
func ourAnnotations(n *corev1.Node, prefix string) map[string]string {
	out := map[string]string{}
	for k, v := range n.Annotations {
		if strings.HasPrefix(k, prefix) {
			out[k] = v
		}
	}
	return out
}

// TestPodCIDRLeaseFromControllerManager: kube-controller-manager assigns
// spec.podCIDR, Acquire returns it and writes exactly the annotations a
// flanneld peer reads, under either prefix; restart keeps the lease; Publish
// rewrites them; NetworkUnavailable becomes False.
func TestPodCIDRLeaseFromControllerManager(t *testing.T) {
	t.Parallel()
	c := startCluster(t, controlplane.Options{ControllerManager: true, ClusterCIDR: "10.244.0.0/16"})
	net := mustNet(t, `{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}`)

	for i, prefix := range []string{"", "flannel.alpha.coreos.com"} {
		t.Run("prefix="+prefix, func(t *testing.T) {
			p := prefix
			if p == "" {
				p = DefaultAnnotationPrefix
			}
			p += "/"
			node := []string{"kcm-node-a", "kcm-node-b"}[i]
			createNode(t, c.admin, node, nil, nil)
			cfg := Config{Client: c.admin, NodeName: node, Net: net, AnnotationPrefix: prefix, SetNodeNetworkUnavailable: true}
			a := startAgent(t, cfg)
			attrs := vxlanAttrs("198.18.0.11", "0a:58:0a:f4:01:01")
			lease := a.acquire(t, attrs)

			n, err := c.admin.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if n.Spec.PodCIDR == "" || lease.Subnet.String() != n.Spec.PodCIDR || lease.Node != node {
				t.Fatalf("lease %+v, node podCIDR %q: want the podCIDR kube-controller-manager assigned", lease, n.Spec.PodCIDR)
			}
			if lease.IPv6Subnet.IsValid() || !attrsEqual(lease.Attrs, attrs) {
				t.Errorf("lease %+v: want no IPv6 subnet and the given attrs", lease)
			}
			want := map[string]string{
				p + "backend-type":        "vxlan",
				p + "backend-data":        `{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:01"}`,
				p + "public-ip":           "198.18.0.11",
				p + "kube-subnet-manager": "true",
			}
			if got := ourAnnotations(n, p); !maps.Equal(got, want) {
				t.Errorf("annotations\n got %v\nwant %v", got, want)
			}
			if !networkAvailable(n) {
				t.Errorf("condition NetworkUnavailable: %+v, want False/OverlaydIsUp", n.Status.Conditions)
			}

			// A restarted agent gets the same lease.
			a.stop()
			a = startAgent(t, cfg)
			if again := a.acquire(t, attrs); !leaseEqual(again, lease) {
				t.Errorf("after restart lease %+v, want %+v", again, lease)
			}
			a.stop()

			// Publish: a host-gw backend has no data, flanneld writes "null".
			hostgw := subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("198.18.0.12"), BackendType: "host-gw"}
			a = startAgent(t, cfg)
			a.acquire(t, attrs)
			if err := a.Publish(context.Background(), hostgw); err != nil {
				t.Fatal(err)
			}
			n, err = c.admin.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			want[p+"backend-type"], want[p+"backend-data"], want[p+"public-ip"] = "host-gw", "null", "198.18.0.12"
			if got := ourAnnotations(n, p); !maps.Equal(got, want) {
				t.Errorf("after Publish annotations\n got %v\nwant %v", got, want)
			}

			// A public IP that is an overwrite: the tunnels' source goes
			// beside it, and goes again with the overwrite.
			overwritten := hostgw
			overwritten.PublicIP, overwritten.SourceIP = netip.MustParseAddr("198.18.0.200"), netip.MustParseAddr("198.18.0.12")
			for _, step := range []struct {
				attrs  subnet.LeaseAttrs
				public string
				source string // "": no annotation
			}{{overwritten, "198.18.0.200", "198.18.0.12"}, {hostgw, "198.18.0.12", ""}} {
				if err := a.Publish(context.Background(), step.attrs); err != nil {
					t.Fatal(err)
				}
				if n, err = c.admin.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{}); err != nil {
					t.Fatal(err)
				}
				want[p+"public-ip"] = step.public
				delete(want, p+"public-ip-source")
				if step.source != "" {
					want[p+"public-ip-source"] = step.source
				}
				if got := ourAnnotations(n, p); !maps.Equal(got, want) {
					t.Errorf("after Publish of %+v annotations\n got %v\nwant %v", step.attrs, got, want)
				}
			}
		})
	}
}

func networkAvailable(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable {
			return c.Status == corev1.ConditionFalse && c.Reason == "OverlaydIsUp"
		}
	}
	return false
}

// flannelAnnotations is what flanneld (--kube-subnet-mgr) writes on its Node.
func flannelAnnotations(publicIP, backendType, backendData string) map[string]string {
	return map[string]string{
		"flannel.alpha.coreos.com/backend-type":        backendType,
		"flannel.alpha.coreos.com/backend-data":        backendData,
		"flannel.alpha.coreos.com/public-ip":           publicIP,
		"flannel.alpha.coreos.com/kube-subnet-manager": "true",
	}
}

// TestPodCIDRPeers: good peers (written by flanneld or overlayd) are
// delivered; malformed, incomplete and out-of-network ones are skipped with
// one log line and one count per problem, never dropping the good ones;
// Acquire waits, saying so, for a podCIDR.
func TestPodCIDRPeers(t *testing.T) {
	c := startCluster(t, controlplane.Options{})
	net := mustNet(t, `{"Network": "10.244.0.0/16"}`)
	const prefix = "flannel.alpha.coreos.com"
	fl := flannelAnnotations
	vx := func(ip, mac string) map[string]string { return fl(ip, "vxlan", `{"VNI":1,"VtepMAC":"`+mac+`"}`) }

	createNode(t, c.admin, "self", []string{"10.244.1.0/24"}, nil)
	createNode(t, c.admin, "good-a", []string{"10.244.2.0/24"}, vx("198.18.0.12", "a2:54:1c:5e:7f:02"))
	createNode(t, c.admin, "hostgw-c", []string{"10.244.4.0/24"}, fl("198.18.0.14", "host-gw", "null"))
	// flanneld's udp backend publishes an empty type and null data.
	createNode(t, c.admin, "udp-e", []string{"10.244.10.0/24"}, fl("198.18.0.20", "", "null"))
	dual := vx("198.18.0.18", "a2:54:1c:5e:7f:08")
	dual["flannel.alpha.coreos.com/public-ipv6"] = "2001:db8::18"
	dual["flannel.alpha.coreos.com/backend-v6-data"] = `{"VNI":1,"VtepMAC":"a2:54:1c:5e:7f:86"}`
	createNode(t, c.admin, "dual-d", []string{"10.244.8.0/24", "fd00:10:244:8::/64"}, dual)
	// An overlayd node whose public IP is an overwrite says where it sends from.
	overwritten := vx("198.18.0.200", "a2:54:1c:5e:7f:0b")
	overwritten["flannel.alpha.coreos.com/public-ip-source"] = "198.18.0.21"
	createNode(t, c.admin, "overwrite-f", []string{"10.244.11.0/24"}, overwritten)
	createNode(t, c.admin, "bad-ip", []string{"10.244.5.0/24"}, fl("198.18.0.999", "vxlan", `{"VNI":1}`))
	createNode(t, c.admin, "bad-json", []string{"10.244.6.0/24"}, fl("198.18.0.16", "vxlan", `{"VNI":`))
	createNode(t, c.admin, "unmanaged", []string{"10.244.7.0/24"}, nil)
	createNode(t, c.admin, "outside", []string{"10.99.0.0/24"}, vx("198.18.0.17", "a2:54:1c:5e:7f:07"))
	createNode(t, c.admin, "no-cidr", nil, vx("198.18.0.19", "a2:54:1c:5e:7f:09"))

	before := map[string]float64{}
	for _, r := range []string{reasonMalformedAnnotations, reasonMissingAnnotations, reasonOutsideNetwork, reasonMissingSubnet} {
		before[r] = skippedCount(t, r)
	}
	a := startAgent(t, Config{Client: c.admin, NodeName: "self", Net: net, AnnotationPrefix: prefix})
	a.acquire(t, vxlanAttrs("198.18.0.11", "a2:54:1c:5e:7f:01"))

	mac := func(s string) json.RawMessage { return json.RawMessage(`{"VNI":1,"VtepMAC":"` + s + `"}`) }
	want := map[string]subnet.Lease{
		"good-a": {Node: "good-a", Subnet: netip.MustParsePrefix("10.244.2.0/24"),
			Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("198.18.0.12"), BackendType: "vxlan", BackendData: mac("a2:54:1c:5e:7f:02")}},
		"hostgw-c": {Node: "hostgw-c", Subnet: netip.MustParsePrefix("10.244.4.0/24"),
			Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("198.18.0.14"), BackendType: "host-gw"}},
		"udp-e": {Node: "udp-e", Subnet: netip.MustParsePrefix("10.244.10.0/24"),
			Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("198.18.0.20"), BackendType: ""}},
		"overwrite-f": {Node: "overwrite-f", Subnet: netip.MustParsePrefix("10.244.11.0/24"),
			Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("198.18.0.200"), SourceIP: netip.MustParseAddr("198.18.0.21"),
				BackendType: "vxlan", BackendData: mac("a2:54:1c:5e:7f:0b")}},
		"dual-d": {Node: "dual-d", Subnet: netip.MustParsePrefix("10.244.8.0/24"),
			Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("198.18.0.18"), BackendType: "vxlan", BackendData: mac("a2:54:1c:5e:7f:08")}},
	}
	assertPeers := func(what string, a *agent, want map[string]subnet.Lease) {
		t.Helper()
		waitFor(t, what, func() (bool, string) {
			got := a.peerMap()
			if got == nil || !maps.EqualFunc(got, want, leaseEqual) {
				return false, formatPeers(got)
			}
			return true, ""
		})
	}
	assertPeers("the good peers", a, want)
	if got := skippedCount(t, reasonMalformedAnnotations) - before[reasonMalformedAnnotations]; got != 2 {
		t.Errorf("malformed_annotations skips counted %v, want 2 (bad-ip, bad-json)", got)
	}
	for _, r := range []string{reasonMissingAnnotations, reasonOutsideNetwork, reasonMissingSubnet} {
		if got := skippedCount(t, r) - before[r]; got != 1 {
			t.Errorf("%s skips counted %v, want 1", r, got)
		}
	}
	for _, peer := range []string{"bad-ip", "bad-json", "unmanaged", "outside", "no-cidr"} {
		if n := len(skipLogs(a, peer)); n != 1 {
			t.Errorf("%s: %d skip log lines, want 1", peer, n)
		}
	}
	if l := skipLogs(a, "bad-ip"); len(l) == 1 && !strings.Contains(l[0].ContextMap()["detail"].(string), `public-ip is "198.18.0.999", not an IPv4 address`) {
		t.Errorf("bad-ip skip log says %v; want it to name the annotation and value", l[0].ContextMap())
	}

	// Changes to good peers are delivered, with a notification, by taking
	// that peer alone into the snapshot; the bad peers stay skipped
	// without another log line. The first change is also a barrier: the
	// informer hands events over in order, so once it shows, the event of
	// the agent's own Acquire write has been taken too and cannot join
	// the measured change below in a resolve of every record.
	ga := want["good-a"]
	ga.Attrs.PublicIP = netip.MustParseAddr("198.18.0.23")
	want["good-a"] = ga
	patchAnnotations(t, c, "good-a", map[string]string{"flannel.alpha.coreos.com/public-ip": "198.18.0.23"})
	assertPeers("good-a's first new public IP", a, want)
	drain(a.Changed())
	a.ChangedPeers()
	changedResolves := resolveCount(t, "changed")
	patchAnnotations(t, c, "good-a", map[string]string{"flannel.alpha.coreos.com/public-ip": "198.18.0.22"})
	select {
	case <-a.Changed():
	case <-time.After(30 * time.Second):
		t.Fatal("no Changed notification after a peer changed")
	}
	ga.Attrs.PublicIP = netip.MustParseAddr("198.18.0.22")
	want["good-a"] = ga
	assertPeers("good-a's new public IP", a, want)
	// The informer not yet showing the agent's own Acquire write is no
	// reason to write it again.
	if n := a.logs.FilterMessageSnippet("writing them again").Len(); n != 0 {
		t.Errorf("the agent wrote its lease annotations again %d times after Acquire, want 0", n)
	}
	if d := resolveCount(t, "changed") - changedResolves; d != 1 {
		t.Errorf("good-a's public IP taken into the snapshot by %v changed-peer resolves, want 1", d)
	}
	// The loop asks what changed, and for that peer alone.
	if nodes, all := a.ChangedPeers(); !all && !slices.Equal(nodes, []string{"good-a"}) {
		t.Errorf("ChangedPeers after good-a's change: %v, want good-a", nodes)
	}
	if got, ok := a.Peer("good-a"); !ok || !leaseEqual(got, ga) {
		t.Errorf("Peer(good-a) = %v, %v; want its new lease", got, ok)
	}
	if _, ok := a.Peer("bad-ip"); ok {
		t.Error("Peer(bad-ip): a skipped node is a peer")
	}
	if n := len(skipLogs(a, "bad-ip")); n != 1 {
		t.Errorf("bad-ip: %d skip log lines after unrelated changes, want still 1", n)
	}

	// A different problem is news: one more line and count. (A skipped
	// peer's change is resolved with every record.)
	allResolves := resolveCount(t, "all")
	count := skippedCount(t, reasonMalformedAnnotations)
	patchAnnotations(t, c, "bad-ip", map[string]string{"flannel.alpha.coreos.com/public-ip": "not-an-ip"})
	waitFor(t, "a second skip log line for bad-ip", func() (bool, string) {
		n := len(skipLogs(a, "bad-ip"))
		return n == 2, "lines: " + strconv.Itoa(n)
	})
	if got := skippedCount(t, reasonMalformedAnnotations) - count; got != 1 {
		t.Errorf("malformed_annotations counted %v more, want 1", got)
	}
	if resolveCount(t, "all") == allResolves {
		t.Error("a skipped peer's change was not resolved with every record")
	}
	// Fixed, it becomes a peer.
	patchAnnotations(t, c, "bad-ip", map[string]string{"flannel.alpha.coreos.com/public-ip": "198.18.0.15"})
	want["bad-ip"] = subnet.Lease{Node: "bad-ip", Subnet: netip.MustParsePrefix("10.244.5.0/24"),
		Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("198.18.0.15"), BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1}`)}}
	assertPeers("bad-ip after its fix", a, want)

	// A dual-stack agent reads flanneld's IPv6 annotations too, and skips
	// nodes without an IPv6 podCIDR.
	net6 := mustNet(t, `{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56"}`)
	createNode(t, c.admin, "self6", []string{"10.244.9.0/24", "fd00:10:244:9::/64"}, nil)
	a6 := startAgent(t, Config{Client: c.admin, NodeName: "self6", Net: net6, AnnotationPrefix: prefix})
	attrs6 := vxlanAttrs("198.18.0.19", "a2:54:1c:5e:7f:19")
	attrs6.PublicIPv6, attrs6.BackendV6Data = netip.MustParseAddr("2001:db8::19"), mac("a2:54:1c:5e:7f:99")
	l6 := a6.acquire(t, attrs6)
	if l6.Subnet.String() != "10.244.9.0/24" || l6.IPv6Subnet.String() != "fd00:10:244:9::/64" {
		t.Errorf("dual-stack lease %+v", l6)
	}
	d := want["dual-d"]
	d.IPv6Subnet = netip.MustParsePrefix("fd00:10:244:8::/64")
	d.Attrs.PublicIPv6, d.Attrs.BackendV6Data = netip.MustParseAddr("2001:db8::18"), mac("a2:54:1c:5e:7f:86")
	// The IPv4-only peers are peers of the dual-stack agent too, over IPv4.
	want6 := map[string]subnet.Lease{"dual-d": d}
	for name, l := range want {
		if name != "dual-d" {
			want6[name] = l
		}
	}
	want6["self"] = subnet.Lease{Node: "self", Subnet: netip.MustParsePrefix("10.244.1.0/24"), Attrs: vxlanAttrs("198.18.0.11", "a2:54:1c:5e:7f:01")}
	assertPeers("the dual-stack peer and the IPv4-only ones", a6, want6)
	// The IPv4 agent sees the dual-stack agent as an IPv4 peer.
	want["self6"] = subnet.Lease{Node: "self6", Subnet: l6.Subnet, Attrs: subnet.LeaseAttrs{
		PublicIP: attrs6.PublicIP, BackendType: "vxlan", BackendData: attrs6.BackendData}}
	assertPeers("self6 as an IPv4 peer", a, want)

	// Acquire waits for a podCIDR, saying why.
	createNode(t, c.admin, "late", nil, nil)
	late := startAgent(t, Config{Client: c.admin, NodeName: "late", Net: net, AnnotationPrefix: prefix})
	type result struct {
		lease subnet.Lease
		err   error
	}
	got := make(chan result, 1)
	go func() {
		l, err := late.Acquire(context.Background(), vxlanAttrs("198.18.0.30", "a2:54:1c:5e:7f:30"))
		got <- result{l, err}
	}()
	waitFor(t, "the waiting log", func() (bool, string) {
		return late.logs.FilterMessageSnippet("waiting for kube-controller-manager to assign spec.podCIDR").Len() == 1, "not logged"
	})
	if _, err := c.admin.CoreV1().Nodes().Patch(context.Background(), "late", types.MergePatchType,
		[]byte(`{"spec":{"podCIDR":"10.244.30.0/24","podCIDRs":["10.244.30.0/24"]}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		if r.err != nil || r.lease.Subnet.String() != "10.244.30.0/24" {
			t.Errorf("late lease %+v, %v; want 10.244.30.0/24", r.lease, r.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Acquire did not return after the podCIDR was assigned")
	}
}

func drain(ch <-chan struct{}) {
	select {
	case <-ch:
	default:
	}
}

func patchAnnotations(t *testing.T, c *cluster, node string, a map[string]string) {
	t.Helper()
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": a}})
	if _, err := c.admin.CoreV1().Nodes().Patch(context.Background(), node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

func formatPeers(m map[string]subnet.Lease) string {
	if m == nil {
		return "not synced"
	}
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(m)) {
		l := m[k]
		b.WriteString(k + "=" + l.Subnet.String() + "," + l.IPv6Subnet.String() + "," + l.Attrs.PublicIP.String() + "," + l.Attrs.BackendType + "," + string(l.Attrs.BackendData) + "; ")
	}
	return b.String()
}

// TestPodCIDRPeerAddedDeleted: a new peer's Node is taken into the
// snapshot alone, and a deleted one out of it, without a resolve of every
// record, each named by ChangedPeers; a new Node claiming a held subnet,
// or a deleted one that held a subnet another claimed too, is resolved
// with every record, and the earlier claim wins then.
func TestPodCIDRPeerAddedDeleted(t *testing.T) {
	c := startCluster(t, controlplane.Options{})
	net := mustNet(t, `{"Network": "10.244.0.0/16"}`)
	const prefix = "flannel.alpha.coreos.com"
	vx := func(ip, mac string) map[string]string {
		return flannelAnnotations(ip, "vxlan", `{"VNI":1,"VtepMAC":"`+mac+`"}`)
	}
	createNode(t, c.admin, "self", []string{"10.244.1.0/24"}, nil)
	createNode(t, c.admin, "p-gone", []string{"10.244.2.0/24"}, vx("198.18.0.12", "a2:54:1c:5e:7f:02"))
	createNode(t, c.admin, "p-stays", []string{"10.244.3.0/24"}, vx("198.18.0.13", "a2:54:1c:5e:7f:03"))
	// Created in the same second or later, and sorting after it: the
	// holder keeps 10.244.7.0/24.
	createNode(t, c.admin, "h-holder", []string{"10.244.7.0/24"}, vx("198.18.0.17", "a2:54:1c:5e:7f:07"))
	createNode(t, c.admin, "l-claimant", []string{"10.244.7.0/24"}, vx("198.18.0.18", "a2:54:1c:5e:7f:08"))

	a := startAgent(t, Config{Client: c.admin, NodeName: "self", Net: net, AnnotationPrefix: prefix})
	a.acquire(t, vxlanAttrs("198.18.0.11", "a2:54:1c:5e:7f:01"))
	peersAre := func(what string, nodes ...string) {
		t.Helper()
		waitFor(t, what, func() (bool, string) {
			got := a.peerMap()
			return got != nil && slices.Equal(slices.Sorted(maps.Keys(got)), nodes), formatPeers(got)
		})
	}
	peersAre("the peers", "h-holder", "p-gone", "p-stays")
	// A barrier (see TestPodCIDRPeers): the Acquire write's event is taken.
	patchAnnotations(t, c, "p-stays", map[string]string{prefix + "/public-ip": "198.18.0.23"})
	waitFor(t, "p-stays's new public IP", func() (bool, string) {
		l, ok := a.Peer("p-stays")
		return ok && l.Attrs.PublicIP == netip.MustParseAddr("198.18.0.23"), fmt.Sprint(l)
	})

	// takenAlone makes change, waits for the peers to be peers, and
	// checks that one changed-peer resolve, and no resolve of every
	// record, took node in or out, and that ChangedPeers names it alone.
	takenAlone := func(node, what string, change func(), peers ...string) {
		t.Helper()
		a.ChangedPeers()
		all, changed := resolveCount(t, "all"), resolveCount(t, "changed")
		change()
		peersAre("the peers after "+what, peers...)
		if d := resolveCount(t, "changed") - changed; d != 1 {
			t.Errorf("%s taken by %v changed-peer resolves, want 1", what, d)
		}
		if d := resolveCount(t, "all") - all; d != 0 {
			t.Errorf("%v resolves of every record after %s, want 0", d, what)
		}
		if nodes, any := a.ChangedPeers(); any || !slices.Equal(nodes, []string{node}) {
			t.Errorf("ChangedPeers after %s: %v (any: %v), want %s", what, nodes, any, node)
		}
	}
	ctx := context.Background()
	takenAlone("p-gone", "p-gone's deletion", func() {
		if err := c.admin.CoreV1().Nodes().Delete(ctx, "p-gone", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}, "h-holder", "p-stays")
	if _, ok := a.Peer("p-gone"); ok {
		t.Error("Peer(p-gone): a deleted node is a peer")
	}

	// A new peer is taken in alone.
	takenAlone("p-new", "p-new's creation", func() {
		createNode(t, c.admin, "p-new", []string{"10.244.4.0/24"}, vx("198.18.0.14", "a2:54:1c:5e:7f:04"))
	}, "h-holder", "p-new", "p-stays")
	if l, ok := a.Peer("p-new"); !ok || l.Subnet != netip.MustParsePrefix("10.244.4.0/24") || l.Attrs.PublicIP != netip.MustParseAddr("198.18.0.14") {
		t.Errorf("Peer(p-new) = %v, %v", l, ok)
	}
	// A new claim on a held subnet, and a new Node with broken
	// annotations, take every record, and are skipped.
	for _, n := range []struct {
		name, cidr  string
		annotations map[string]string
	}{
		{"q-claimant", "10.244.3.0/25", vx("198.18.0.19", "a2:54:1c:5e:7f:09")},
		{"q-broken", "10.244.5.0/24", flannelAnnotations("198.18.0.999", "vxlan", `{"VNI":1}`)},
	} {
		all := resolveCount(t, "all")
		createNode(t, c.admin, n.name, []string{n.cidr}, n.annotations)
		waitFor(t, n.name+" skipped", func() (bool, string) {
			res, _ := a.state()
			_, skipped := res.skipped[n.name]
			return skipped, fmt.Sprint(res.skipped)
		})
		if resolveCount(t, "all") == all {
			t.Errorf("%s was not resolved with every record", n.name)
		}
		peersAre("the peers, still", "h-holder", "p-new", "p-stays")
	}

	// The holder's deletion lets the claimant in: that takes every record.
	all := resolveCount(t, "all")
	if err := c.admin.CoreV1().Nodes().Delete(ctx, "h-holder", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	peersAre("the claimant in the holder's place", "l-claimant", "p-new", "p-stays")
	if resolveCount(t, "all") == all {
		t.Error("the holder's deletion was not resolved with every record")
	}
	if l, _ := a.Peer("l-claimant"); l.Subnet != netip.MustParsePrefix("10.244.7.0/24") {
		t.Errorf("Peer(l-claimant) = %v, want 10.244.7.0/24", l)
	}
}
