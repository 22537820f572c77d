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
	data, err := os.ReadFile(n.SubnetEnv)
	if err != nil {
		return "", fmt.Errorf("reading subnet.env of %s: %w", n.Name, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, key+"="); ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("no %s in %s:\n%s", key, n.SubnetEnv, data)
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

// Lease is what the API server holds of a node's lease: its podCIDR and
// what its agent published.
type Lease struct {
	Node        string
	Subnet      netip.Prefix // spec.podCIDR; the zero Prefix while none is assigned
	PublicIP    netip.Addr   // the zero Addr until the agent published
	BackendType string
	BackendData string // JSON, as published
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
		l := Lease{Node: n.Name, BackendType: a[annotationPrefix+"backend-type"], BackendData: a[annotationPrefix+"backend-data"]}
		if n.Spec.PodCIDR != "" {
			if l.Subnet, err = netip.ParsePrefix(n.Spec.PodCIDR); err != nil {
				return nil, fmt.Errorf("spec.podCIDR of Node %s: %w", n.Name, err)
			}
		}
		if v := a[annotationPrefix+"public-ip"]; v != "" {
			if l.PublicIP, err = netip.ParseAddr(v); err != nil {
				return nil, fmt.Errorf("%spublic-ip of Node %s: %w", annotationPrefix, n.Name, err)
			}
		}
		out = append(out, l)
	}
	return out, nil
}
