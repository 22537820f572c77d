package cluster

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/overlayd/overlayd/subnet/kube"
	"github.com/overlayd/overlayd/test/lab"
)

// SubnetEnv reads a variable of the node's subnet.env, as the CNI plugin does.
func SubnetEnv(n *lab.Node, key string) (string, error) {
	vars, text, err := readSubnetEnv(n)
	if err != nil {
		return "", err
	}
	v, ok := vars[key]
	if !ok {
		return "", fmt.Errorf("no %s in %s:\n%s", key, n.SubnetEnv, text)
	}
	return v, nil
}

// readSubnetEnv returns the variables of the node's subnet.env and its text.
func readSubnetEnv(n *lab.Node) (map[string]string, string, error) {
	data, err := os.ReadFile(n.SubnetEnv)
	if err != nil {
		return nil, "", fmt.Errorf("reading subnet.env of %s: %w", n.Name, err)
	}
	vars := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			vars[k] = v
		}
	}
	return vars, string(data), nil
}

// SubnetOf is the node's lease, FLANNEL_SUBNET of its subnet.env.
func SubnetOf(n *lab.Node) (netip.Prefix, error) {
	v, err := SubnetEnv(n, "FLANNEL_SUBNET")
	if err != nil {
		return netip.Prefix{}, err
	}
	p, err := netip.ParsePrefix(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("FLANNEL_SUBNET of %s: %w", n.Name, err)
	}
	return p.Masked(), nil
}

// SubnetsOf is the node's lease of each family its subnet.env has one of:
// FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET, as the CNI plugin reads them.
func SubnetsOf(n *lab.Node) (Subnets, error) {
	var s Subnets
	vars, text, err := readSubnetEnv(n)
	if err != nil {
		return s, err
	}
	for key, slot := range map[string]*netip.Prefix{"FLANNEL_SUBNET": &s.IPv4, "FLANNEL_IPV6_SUBNET": &s.IPv6} {
		v, ok := vars[key]
		if !ok {
			continue
		}
		p, err := netip.ParsePrefix(v)
		if err != nil || p.Addr().Is6() != (key == "FLANNEL_IPV6_SUBNET") {
			return s, fmt.Errorf("%s of %s: %q is not a subnet of its family (%v)", key, n.Name, v, err)
		}
		*slot = p.Masked()
	}
	if s == (Subnets{}) {
		return s, fmt.Errorf("no FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET in %s:\n%s", n.SubnetEnv, text)
	}
	return s, nil
}

// Samples are the samples of a /metrics page by their name with labels, as
// exposed: e.g. `overlayd_leases` or `overlayd_kernel_entries{kind="route"}`.
type Samples map[string]float64

// ParseSamples reads the Prometheus text format.
func ParseSamples(text string) Samples {
	out := Samples{}
	for _, line := range strings.Split(text, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// Sum adds up the samples of name: the one sample of that exact name with
// labels, or every label set of a bare metric name.
func (s Samples) Sum(name string) float64 {
	var sum float64
	for k, v := range s {
		if k == name || strings.HasPrefix(k, name+"{") {
			sum += v
		}
	}
	return sum
}

// Metrics fetches the node's agent's /metrics.
func (c *Cluster) Metrics(ctx context.Context, n *lab.Node) (Samples, error) {
	code, body, err := c.Health(ctx, n, "/metrics")
	if err != nil || code != http.StatusOK {
		return nil, fmt.Errorf("/metrics on %s: %d %v", n.Name, code, err)
	}
	return ParseSamples(body), nil
}

// annotationPrefix is overlayd's default --kube-annotation-prefix.
const annotationPrefix = kube.DefaultAnnotationPrefix + "/"

// Lease is what the API server holds of a node's lease: its podCIDRs and
// what its agent published, of each family.
type Lease struct {
	Node          string
	Subnet        netip.Prefix // the IPv4 podCIDR; the zero Prefix while none is assigned
	IPv6Subnet    netip.Prefix // the IPv6 podCIDR, likewise
	PublicIP      netip.Addr   // the zero Addr until the agent published
	PublicIPv6    netip.Addr   // likewise, in a cluster with IPv6
	BackendType   string
	BackendData   string // JSON, as published
	BackendV6Data string // JSON, as published for IPv6
}

// Leases reads every Node's lease from the API server, in the API's order
// (by name).
func (c *Cluster) Leases(ctx context.Context) ([]Lease, error) {
	nodes, err := c.Admin.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing Nodes: %w", err)
	}
	var out []Lease
	for _, n := range nodes.Items {
		a := n.Annotations
		l := Lease{Node: n.Name, BackendType: a[annotationPrefix+"backend-type"],
			BackendData: a[annotationPrefix+"backend-data"], BackendV6Data: a[annotationPrefix+"backend-v6-data"]}
		cidrs, err := parsePodCIDRs(n.Spec.PodCIDRs)
		if err != nil {
			return nil, fmt.Errorf("spec.podCIDRs of Node %s: %w", n.Name, err)
		}
		l.Subnet, l.IPv6Subnet = cidrs.IPv4, cidrs.IPv6
		for key, addr := range map[string]*netip.Addr{"public-ip": &l.PublicIP, "public-ipv6": &l.PublicIPv6} {
			if v := a[annotationPrefix+key]; v != "" {
				if *addr, err = netip.ParseAddr(v); err != nil {
					return nil, fmt.Errorf("%s%s of Node %s: %w", annotationPrefix, key, n.Name, err)
				}
			}
		}
		out = append(out, l)
	}
	return out, nil
}
