package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/overlayd/overlayd/test/lab"
)

const annotationPrefix = "overlayd.io/"

// peerLease is what the API says about a node: its subnet and what it
// published.
type peerLease struct {
	node        string
	subnet      netip.Prefix
	publicIP    netip.Addr
	backendType string
	vtepMAC     string
	vni         int
}

// leases reads every node's lease from the API server.
func (c *cluster) leases() map[string]peerLease {
	c.t.Helper()
	nodes, err := c.admin.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	out := map[string]peerLease{}
	for _, n := range nodes.Items {
		a := n.Annotations
		if n.Spec.PodCIDR == "" || a[annotationPrefix+"public-ip"] == "" {
			continue
		}
		l := peerLease{
			node:        n.Name,
			subnet:      netip.MustParsePrefix(n.Spec.PodCIDR),
			publicIP:    netip.MustParseAddr(a[annotationPrefix+"public-ip"]),
			backendType: a[annotationPrefix+"backend-type"],
		}
		var data struct {
			VNI     int
			VtepMAC string
		}
		if json.Unmarshal([]byte(a[annotationPrefix+"backend-data"]), &data) == nil {
			l.vtepMAC, l.vni = data.VtepMAC, data.VNI
		}
		out[n.Name] = l
	}
	return out
}

type ipRoute struct {
	Dst      string   `json:"dst"`
	Gateway  string   `json:"gateway"`
	Dev      string   `json:"dev"`
	Flags    []string `json:"flags"`
	Protocol string   `json:"protocol"`
}

type ipNeigh struct {
	Dst    string   `json:"dst"`
	Dev    string   `json:"dev"`
	LLAddr string   `json:"lladdr"`
	State  []string `json:"state"`
}

type fdbEntry struct {
	MAC   string   `json:"mac"`
	Dst   string   `json:"dst"`
	State string   `json:"state"`
	Flags []string `json:"flags"`
}

// overlaydRoutes lists the node's routes with overlayd's protocol.
func overlaydRoutes(t *testing.T, n *lab.Node) []ipRoute {
	return ipJSON[ipRoute](t, n, "route", "show", "proto", "79")
}

// vxlanState describes the node's overlayd kernel state as lines, sorted,
// so that it compares as a whole and prints readably.
func vxlanState(t *testing.T, n *lab.Node, dev string) []string {
	var lines []string
	for _, r := range overlaydRoutes(t, n) {
		lines = append(lines, fmt.Sprintf("route %s via %s dev %s %s", r.Dst, r.Gateway, r.Dev, strings.Join(r.Flags, ",")))
	}
	if links := ipJSON[map[string]any](t, n, "link", "show", "dev", dev); len(links) == 0 {
		return lines
	}
	for _, nb := range ipJSON[ipNeigh](t, n, "neigh", "show", "dev", dev, "nud", "permanent") {
		lines = append(lines, fmt.Sprintf("neigh %s lladdr %s", nb.Dst, nb.LLAddr))
	}
	out, err := n.Exec(context.Background(), "bridge", "-j", "fdb", "show", "dev", dev)
	if err != nil {
		t.Fatalf("bridge fdb on %s: %v", n.Name, err)
	}
	var fdb []fdbEntry
	if err := json.Unmarshal([]byte(out), &fdb); err != nil {
		t.Fatalf("bridge fdb on %s: %v\n%s", n.Name, err, out)
	}
	for _, f := range fdb {
		if f.State == "permanent" {
			lines = append(lines, fmt.Sprintf("fdb %s dst %s", f.MAC, f.Dst))
		}
	}
	sort.Strings(lines)
	return lines
}

// wantVXLANState is the state a node must have for the leases of its peers.
func wantVXLANState(self string, leases map[string]peerLease) []string {
	var lines []string
	for name, l := range leases {
		if name == self {
			continue
		}
		vtep := l.subnet.Addr()
		lines = append(lines,
			fmt.Sprintf("route %s via %s dev overlay.1 onlink", l.subnet, vtep),
			fmt.Sprintf("neigh %s lladdr %s", vtep, l.vtepMAC),
			fmt.Sprintf("fdb %s dst %s", l.vtepMAC, l.publicIP),
		)
	}
	sort.Strings(lines)
	return lines
}

// requireVXLANStateMatchesLeases asserts, on every node, that overlayd's
// routes, neighbours and FDB entries are exactly those its peers' leases
// call for: nothing missing, nothing extra.
func (c *cluster) requireVXLANStateMatchesLeases() {
	c.t.Helper()
	leases := c.leases()
	for _, n := range c.lab.Nodes {
		if _, live := leases[n.Name]; !live {
			continue
		}
		want := strings.Join(wantVXLANState(n.Name, leases), "\n")
		eventually(c.t, 30e9, "kernel state of "+n.Name+" matches the leases", func() (bool, string) {
			got := strings.Join(vxlanState(c.t, n, "overlay.1"), "\n")
			return got == want, fmt.Sprintf("have:\n%s\nwant:\n%s", got, want)
		})
	}
}
