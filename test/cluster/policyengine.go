package cluster

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/overlayd/overlayd/test/controlplane"
	"github.com/overlayd/overlayd/test/lab"
)

// KubeRouter is the lab process name of a node's policy engine.
const KubeRouter = "kube-router"

// KubeRouterHealthPort is where kube-router's health server listens inside
// its node (its default).
const KubeRouterHealthPort = 20244

// KubeRouterBinary is the real NetworkPolicy engine the tests pair with
// overlayd: kube-router in the test binaries' directory
// ($OVERLAYD_TEST_BIN_DIR, else hack/tools/bin), built by
// `make policy-engine-bin` (part of `make test-bins`) from
// hack/tools/kube-router. A test binary only (see that module's comment).
func KubeRouterBinary() (string, error) {
	dir, err := controlplane.BinDir()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "kube-router")
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("cluster: kube-router missing in %s (run `make policy-engine-bin`, or set OVERLAYD_TEST_BIN_DIR): %w", dir, err)
	}
	return bin, nil
}

// KubeRouterArgv is the command line of the node's policy engine:
// kube-router's network policy controller alone (no routing, no service
// proxy, no CNI config, no metrics), IPv4, for the node named by
// --hostname-override, authenticating with kubeconfig. Its full syncs come
// from API events only (a periodic one each hour), so its rules change only
// when Pods, Namespaces or NetworkPolicies do.
func KubeRouterArgv(bin, kubeconfig string, n *lab.Node) []string {
	return []string{bin,
		"--kubeconfig", kubeconfig,
		"--hostname-override", n.Name,
		"--run-firewall=true", "--run-router=false", "--run-service-proxy=false",
		"--enable-cni=false", "--enable-ipv4=true", "--enable-ipv6=false",
		"--metrics-port=0", fmt.Sprintf("--health-port=%d", KubeRouterHealthPort),
		"--iptables-sync-period=1h",
	}
}

// StartKubeRouter runs kube-router's network policy controller in the
// node's network namespace (and so only there: its iptables chains
// KUBE-ROUTER-* and its ipsets are the node's), as admin, with NODE_NAME
// set. It first gives the Node object the InternalIP address a kubelet
// reports (the node's underlay IPv4 address): kube-router takes the pods
// whose status.hostIP is that address as the node's own. Wait with
// WaitKubeRouterReady.
func (c *Cluster) StartKubeRouter(ctx context.Context, n *lab.Node) (*lab.Process, error) {
	bin, err := KubeRouterBinary()
	if err != nil {
		return nil, err
	}
	if err := c.SetNodeInternalIP(ctx, n); err != nil {
		return nil, err
	}
	kubeconfig := filepath.Join(n.Dir, "kube-router.kubeconfig")
	if err := n.WriteKubeconfig(kubeconfig, controlplane.Admin); err != nil {
		return nil, err
	}
	env := []string{"NODE_NAME=" + n.Name, "PATH=" + sbinPath()} // it runs iptables, ipset
	p, err := n.StartWithEnv(KubeRouter, env, KubeRouterArgv(bin, kubeconfig, n)...)
	if err != nil {
		return nil, fmt.Errorf("starting kube-router on %s: %w", n.Name, err)
	}
	return p, nil
}

// WaitKubeRouterReady waits until kube-router on the node answers /healthz
// with 200 (its informers synced and its controllers beating) and its
// top-level chain KUBE-ROUTER-FORWARD is jumped to from FORWARD. It fails at
// once if kube-router exits.
func (c *Cluster) WaitKubeRouterReady(ctx context.Context, n *lab.Node, p *lab.Process, timeout time.Duration) error {
	client := HTTPClient(n, c.opts.HealthTimeout)
	defer client.CloseIdleConnections()
	var exited error
	err := Poll(ctx, timeout, c.opts.PollInterval, func() (bool, string) {
		if !p.Running() {
			exited = fmt.Errorf("kube-router on %s exited: %v\n%s", n.Name, p.ExitErr(), p.Tail(3000))
			return true, ""
		}
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", KubeRouterHealthPort))
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, resp.Status
		}
		rules, err := n.Exec(ctx, "iptables", "-w", "-t", "filter", "-S", "FORWARD")
		if err != nil {
			return false, err.Error()
		}
		return strings.Contains(rules, "-j KUBE-ROUTER-FORWARD"), rules
	})
	if exited != nil {
		return exited
	}
	if err != nil {
		return fmt.Errorf("kube-router on %s ready: %w\n%s", n.Name, err, p.Tail(3000))
	}
	return nil
}

// SetNodeInternalIP sets the node's InternalIP (its underlay IPv4 address)
// in its Node's status.addresses, as a kubelet reports it, unless it is
// there.
func (c *Cluster) SetNodeInternalIP(ctx context.Context, n *lab.Node) error {
	node, err := c.Admin.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("getting Node %s: %w", n.Name, err)
	}
	for _, a := range node.Status.Addresses {
		if a.Type == corev1.NodeInternalIP && a.Address == n.IP.String() {
			return nil
		}
	}
	node.Status.Addresses = append(node.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: n.IP.String()})
	if _, err := c.Admin.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("setting the InternalIP of Node %s: %w", n.Name, err)
	}
	return nil
}

// RegisterPod creates the Pod object of a lab pod, in namespace with
// labels, as a kubelet's pod would look in the API once running: bound to
// its node (spec.nodeName), status phase Running with the pod's addresses
// as podIP(s) and the node's underlay address as hostIP(s), set through
// the status subresource. The lab has no kubelet: nothing runs the Pod's
// container, the lab pod (a network namespace) is what it stands for. The
// namespace and its "default" ServiceAccount (which admission wants, and no
// controller creates here) are created if missing.
func (c *Cluster) RegisterPod(ctx context.Context, p *lab.Pod, namespace string, labels map[string]string) (*corev1.Pod, error) {
	if err := c.ensureNamespace(ctx, namespace); err != nil {
		return nil, err
	}
	noToken := false
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: namespace, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:                     p.Node.Name,
			AutomountServiceAccountToken: &noToken,
			Containers:                   []corev1.Container{{Name: "main", Image: "registry.k8s.io/pause:3.10"}},
		},
	}
	created, err := c.Admin.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating Pod %s/%s: %w", namespace, p.Name, err)
	}
	now := metav1.Now()
	created.Status = corev1.PodStatus{
		Phase:     corev1.PodRunning,
		HostIP:    p.Node.IP.String(),
		HostIPs:   []corev1.HostIP{{IP: p.Node.IP.String()}},
		StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
	}
	for _, a := range []string{addrString(p.IP), addrString(p.IP6)} {
		if a != "" {
			created.Status.PodIPs = append(created.Status.PodIPs, corev1.PodIP{IP: a})
		}
	}
	if len(created.Status.PodIPs) > 0 {
		created.Status.PodIP = created.Status.PodIPs[0].IP
	}
	updated, err := c.Admin.CoreV1().Pods(namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("setting the status of Pod %s/%s: %w", namespace, p.Name, err)
	}
	return updated, nil
}

func (c *Cluster) ensureNamespace(ctx context.Context, name string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := c.Admin.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating Namespace %s: %w", name, err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: name}}
	if _, err := c.Admin.CoreV1().ServiceAccounts(name).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating ServiceAccount %s/default: %w", name, err)
	}
	return nil
}

// addrString is the address as text, empty for the zero Addr.
func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
