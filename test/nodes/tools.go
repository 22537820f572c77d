package nodes

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"

	"github.com/overlayd/overlayd/test/lab"
)

// Kubectl runs the real kubectl (hack/tools) against the cluster as admin,
// as a user would, and returns its standard output; an error carries
// standard error.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	return c.run(ctx, "kubectl", args...)
}

// Helm runs the real helm (hack/tools/helm) against the cluster as admin.
func (c *Cluster) Helm(ctx context.Context, args ...string) (string, error) {
	return c.run(ctx, "helm", args...)
}

func (c *Cluster) run(ctx context.Context, tool string, args ...string) (string, error) {
	bin := filepath.Join(c.bins, tool)
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("%s missing in %s: run `make test-bins helm-bin`", tool, c.bins)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	// helm keeps its cache and configuration under HOME-relative paths:
	// the cluster's own.
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Kubeconfig,
		"HELM_CACHE_HOME="+filepath.Join(c.Dir, "helm", "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(c.Dir, "helm", "config"),
		"HELM_DATA_HOME="+filepath.Join(c.Dir, "helm", "data"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// PodNetwork returns the network namespace the container runtime made for
// a running pod (not hostNetwork), for pinging from inside it: the one of
// its node's namespaces (/run/netns of the node) holding the pod's IP.
func (c *Cluster) PodNetwork(pod *corev1.Pod) (*lab.Host, netip.Addr, error) {
	ip, err := netip.ParseAddr(pod.Status.PodIP)
	if err != nil {
		return nil, ip, fmt.Errorf("pod %s has no IP yet (%q)", pod.Name, pod.Status.PodIP)
	}
	n := c.Node(pod.Spec.NodeName)
	if n == nil {
		return nil, ip, fmt.Errorf("pod %s is on %q, not a node of this cluster", pod.Name, pod.Spec.NodeName)
	}
	dir := filepath.Join(n.RootPath(), "run", "netns")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, ip, err
	}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		if hasAddr(path, ip) {
			return lab.Foreign(pod.Namespace+"/"+pod.Name, path), ip, nil
		}
	}
	return nil, ip, fmt.Errorf("no network namespace of %s holds %s (pod %s)", n.Name, ip, pod.Name)
}

func hasAddr(nsPath string, ip netip.Addr) bool {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return false
	}
	defer ns.Close()
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		return false
	}
	defer nl.Close()
	addrs, err := nl.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
			return true
		}
	}
	return false
}
