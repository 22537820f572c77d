package kernel

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"
)

// flanneldNode builds, by hand, what flanneld's vxlan backend leaves on a
// node: flannel.1 (VNI 1, port 8472, its own MAC), its /32, routes without a
// protocol, permanent neighbour and FDB entries, one of them for a peer that
// has gone since, and its blackhole for the own subnet.
func flanneldNode(t *testing.T) (*Reconciler, string) {
	ns, name := underlayNS(t)
	r := newTestReconciler(t, ns)
	for _, args := range [][]string{
		{"link", "add", "flannel.1", "address", "0e:00:00:00:00:99", "type", "vxlan", "id", "1", "dstport", "8472", "local", "198.18.0.11", "dev", "eth0", "nolearning"},
		{"link", "set", "flannel.1", "mtu", "1450", "up"},
		{"addr", "add", "10.244.1.0/32", "dev", "flannel.1"},
		{"route", "add", "10.244.2.0/24", "via", "10.244.2.0", "dev", "flannel.1", "onlink"},
		{"route", "add", "10.244.9.0/24", "via", "10.244.9.0", "dev", "flannel.1", "onlink"},
		{"route", "add", "blackhole", "10.244.1.0/24"},
		{"route", "add", "10.99.0.0/24", "via", "198.18.0.1", "dev", "eth0"}, // not the pod network's: someone else's
		{"neigh", "add", "10.244.2.0", "lladdr", "0e:00:00:00:00:12", "dev", "flannel.1", "nud", "permanent"},
	} {
		ipIn(t, name, args...)
	}
	if out, err := execBridge(name, "fdb", "add", "0e:00:00:00:00:12", "dev", "flannel.1", "dst", "198.18.0.12", "self", "permanent"); err != nil {
		t.Fatalf("bridge fdb add: %v %s", err, out)
	}
	return r, name
}

// Adopt renames flanneld's device in place, keeping its MAC, addresses,
// routes and entries; Apply then adds ours beside its routes (the same next
// hops; ours with the metric spreadMetric gives them, flanneld's with 0) and
// RemoveRoutes takes what is left of flanneld's into the pod network.
func TestAdoptFlanneldDevice(t *testing.T) {
	r, name := flanneldNode(t)
	before := ipIn(t, name, "-o", "link", "show", "flannel.1")
	index := strings.SplitN(before, ":", 2)[0]

	if err := r.Adopt("flannel.1", "overlay.1"); err != nil {
		t.Fatal(err)
	}
	after := ipIn(t, name, "-o", "-d", "link", "show", "overlay.1")
	for _, s := range []string{index + ": overlay.1", "0e:00:00:00:00:99", "alias overlayd", "vxlan id 1"} {
		if !strings.Contains(after, s) {
			t.Errorf("adopted device lacks %q:\n%s", s, after)
		}
	}
	if routes := ipIn(t, name, "route", "show", "10.244.2.0/24"); !strings.Contains(routes, "dev overlay.1") {
		t.Errorf("the route through the device did not survive the rename: %q", routes)
	}
	macs, err := r.OwnMACs()
	if err != nil || macs["overlay.1"].String() != "0e:00:00:00:00:99" {
		t.Fatalf("OwnMACs: %v %v", macs, err)
	}

	want := vxlanState()
	want.Links[0].MAC = macs["overlay.1"]
	want.Routes, want.Neighs, want.FDB = want.Routes[:1], want.Neighs[:1], want.FDB[:1]
	ch := mustApply(t, r, want)
	if ch.Updated[EntryLink] != 0 || ch.Deleted[EntryLink] != 0 {
		t.Errorf("the adopted device was changed: %+v", ch)
	}
	if got := ipIn(t, name, "-o", "link", "show", "overlay.1"); !strings.HasPrefix(got, index+": ") {
		t.Errorf("the adopted device was recreated: %s", got)
	}
	if routes := ipIn(t, name, "route", "show", "10.244.2.0/24"); !strings.Contains(routes, "10.244.2.0/24 via 10.244.2.0 dev overlay.1 proto 79 metric 2 onlink") || strings.Count(routes, "\n") != 2 {
		t.Errorf("want our route beside flanneld's: %q", routes)
	}

	n, err := r.RemoveRoutes(func(ri RouteInfo) bool {
		return ri.Protocol == 3 && (ri.Blackhole || ri.Dev == "overlay.1") && netip.MustParsePrefix("10.244.0.0/16").Contains(ri.Dst.Addr())
	})
	if err != nil || n != 3 {
		t.Fatalf("RemoveRoutes: %d, %v; want 3 (the one ours stands beside, the departed peer's, the blackhole)", n, err)
	}
	if routes := ipIn(t, name, "route", "show", "10.244.2.0/24"); strings.Count(routes, "\n") != 1 || !strings.Contains(routes, "proto 79") {
		t.Errorf("after RemoveRoutes, want only ours to 10.244.2.0/24: %q", routes)
	}
	routes := ipIn(t, name, "route", "show")
	if strings.Contains(routes, "10.244.9.0") || strings.Contains(routes, "blackhole") || !strings.Contains(routes, "10.99.0.0/24") {
		t.Errorf("after RemoveRoutes:\n%s", routes)
	}
	assertKernel(t, name, want)
}

// RemoveLink deletes a link of another agent's, and a missing one is fine.
func TestRemoveLink(t *testing.T) {
	ns, name := underlayNS(t)
	r := newTestReconciler(t, ns)
	ipIn(t, name, "link", "add", "flannel0", "type", "veth", "peer", "name", "flannel0-peer")
	if err := r.RemoveLink("flannel0"); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(ipIn(t, name, "link", "show"), "flannel0") {
		t.Error("flannel0 left")
	}
	if err := r.RemoveLink("flannel0"); err != nil {
		t.Errorf("removing a missing link: %v", err)
	}
}

func execBridge(ns string, args ...string) ([]byte, error) {
	return exec.Command("bridge", append([]string{"-n", ns}, args...)...).CombinedOutput()
}
