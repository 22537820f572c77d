// Package controlplane starts a real etcd and kube-apiserver (and, when
// asked, kube-controller-manager) on free loopback ports for tests. The
// binaries come from hack/tools (`make test-bins`); nothing is faked.
//
// The apiserver runs with RBAC and static bearer tokens: one for an admin
// (system:masters) and one per requested service account identity, so tests
// can prove what a restricted agent may and may not do.
package controlplane

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Options tune a control plane. The zero value starts etcd and kube-apiserver.
type Options struct {
	// ServiceAccounts are "namespace/name" identities to issue tokens for.
	// Default: kube-system/overlayd and kube-system/nobody.
	ServiceAccounts []string
	// ControllerManager also starts kube-controller-manager with the
	// garbage collector and, when ClusterCIDR is set, node IPAM assigning
	// spec.podCIDRs to new Nodes as in a real cluster.
	ControllerManager bool
	// ClusterCIDR is kube-controller-manager's --cluster-cidr: one network
	// ("10.244.0.0/16", or "fd00:10:244::/56" for an IPv6-only cluster) or
	// one of each family, comma-separated, for a dual-stack cluster
	// ("10.244.0.0/16,fd00:10:244::/56"; the first is spec.podCIDR).
	ClusterCIDR          string
	NodeCIDRMaskSize     int // of IPv4 node CIDRs; default 24
	NodeCIDRMaskSizeIPv6 int // of IPv6 node CIDRs; default 64
	// LogDir receives the binaries' logs; default: inside the temporary dir.
	LogDir string
	// TempDir is where the temporary dir (etcd's data, the certificates)
	// is made; default os.TempDir(). A caller that sweeps its own dir after
	// a crash puts it there, so that a killed run leaves nothing behind.
	TempDir string

	// Workloads runs what pods on real kubelets need (test/nodes): the API
	// server authorizes kubelets as kubeadm's does (Node,RBAC and the
	// NodeRestriction admission plugin) and reaches them with a client
	// certificate; kube-controller-manager also runs the controllers of
	// workloads (DaemonSets, Deployments, service accounts, the
	// kube-root-ca.crt ConfigMaps, node lifecycle, pod and namespace
	// cleanup), with ControllerManager implied; kube-scheduler runs.
	Workloads bool
	// Nodes get a kubelet identity each: NodeIdentity(name), the user
	// system:node:<name> in group system:nodes.
	Nodes []string
	// ClusterEgress is the unix socket of an HTTP CONNECT proxy through
	// which the API server reaches nodes and pods (its egress selection
	// "cluster": logs, exec, port-forward), e.g. a proxy into network
	// namespaces the API server's own cannot reach.
	ClusterEgress string
	// APIServerArgs are further kube-apiserver flags, after the harness's
	// own, e.g. "--watch-cache-sizes=nodes#0" to serve Node watches from
	// etcd, so that a compaction (Compact) expires them.
	APIServerArgs []string
}

// ControlPlane is a running etcd + kube-apiserver.
type ControlPlane struct {
	URL    string // https://127.0.0.1:<port>
	CAData []byte
	CAFile string // CAData as a file, e.g. for a kubelet's client CA
	Dir    string

	tokens  map[string]string // identity -> bearer token
	etcdURL string
	procs   []*process
	once    sync.Once
}

// Admin is the identity with full access.
const Admin = "admin"

// NodeIdentity is the identity of a kubelet (Options.Nodes) for Config and
// WriteKubeconfig.
func NodeIdentity(node string) string { return "node/" + node }

// KubernetesServiceIP is the ClusterIP of the kubernetes Service (the first
// of the service range), which the serving certificate covers: pods reach
// the API server there.
const KubernetesServiceIP = "10.96.0.1"

// DefaultServiceAccounts are issued tokens when Options.ServiceAccounts is empty.
var DefaultServiceAccounts = []string{"kube-system/overlayd", "kube-system/nobody"}

// BinDir returns the directory holding the test binaries: $OVERLAYD_TEST_BIN_DIR,
// else hack/tools/bin of the repository containing the working directory.
func BinDir() (string, error) {
	if d := os.Getenv("OVERLAYD_TEST_BIN_DIR"); d != "" {
		return d, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "hack", "tools", "go.mod")); err == nil {
			return filepath.Join(dir, "hack", "tools", "bin"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cannot find hack/tools above the working directory; set OVERLAYD_TEST_BIN_DIR")
		}
		dir = parent
	}
}

// StartT starts a control plane for a test and stops it when the test ends.
func StartT(t testing.TB, opts Options) *ControlPlane {
	t.Helper()
	cp, err := Start(opts)
	if err != nil {
		t.Fatalf("starting control plane: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range cp.procs {
				t.Logf("%s", p.tail())
			}
		}
		cp.Stop()
	})
	return cp
}

// Start starts etcd and kube-apiserver and waits until the apiserver is ready.
func Start(opts Options) (cp *ControlPlane, err error) {
	clusterCIDRs, err := parseClusterCIDR(opts.ClusterCIDR)
	if err != nil {
		return nil, err
	}
	bins, err := BinDir()
	if err != nil {
		return nil, err
	}
	if opts.Workloads {
		opts.ControllerManager = true
	}
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		if (b == "kube-controller-manager" && !opts.ControllerManager) || (b == "kube-scheduler" && !opts.Workloads) {
			continue
		}
		if _, err := os.Stat(filepath.Join(bins, b)); err != nil {
			return nil, fmt.Errorf("test binary %s missing in %s: run `make test-bins`", b, bins)
		}
	}
	dir, err := os.MkdirTemp(opts.TempDir, "overlayd-cp-")
	if err != nil {
		return nil, err
	}
	cp = &ControlPlane{Dir: dir, tokens: map[string]string{}}
	defer func() {
		if err != nil {
			cp.Stop()
		}
	}()
	logDir := opts.LogDir
	if logDir == "" {
		logDir = dir
	}

	pki, err := writePKI(dir)
	if err != nil {
		return nil, fmt.Errorf("writing certificates: %w", err)
	}
	cp.CAData, cp.CAFile = pki.caPEM, pki.caFile
	tokenFile, err := cp.writeTokens(dir, opts.ServiceAccounts, opts.Nodes)
	if err != nil {
		return nil, err
	}

	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	etcd, err := startProcess(filepath.Join(bins, "etcd"), filepath.Join(logDir, "etcd.log"),
		"--name=default",
		"--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+clientURL, "--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=default="+peerURL,
		"--unsafe-no-fsync", // a test cluster trades durability for speed
		"--log-level=warn",
	)
	if err != nil {
		return nil, err
	}
	cp.procs = append(cp.procs, etcd)
	cp.etcdURL = clientURL

	cp.URL = "https://127.0.0.1:" + strconv.Itoa(ports[2])
	authz := []string{"--authorization-mode=RBAC"}
	if opts.Workloads {
		authz = []string{
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--kubelet-client-certificate=" + pki.kubeletClientCert, "--kubelet-client-key=" + pki.kubeletClientKey,
			// There is no DNS for node names here.
			"--kubelet-preferred-address-types=InternalIP",
		}
	}
	if opts.ClusterEgress != "" {
		conf, err := writeEgressConfig(dir, opts.ClusterEgress)
		if err != nil {
			return nil, err
		}
		authz = append(authz, "--egress-selector-config-file="+conf)
	}
	apiserverArgs := append([]string{
		"--etcd-servers=" + clientURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(ports[2]),
		"--tls-cert-file=" + pki.servingCert, "--tls-private-key-file=" + pki.servingKey,
		"--token-auth-file=" + tokenFile,
		"--allow-privileged=true", // as kubeadm and kind run it: node agents such as calico-node are privileged
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki.saPublic,
		"--service-account-signing-key-file=" + pki.saSigner,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=1",
	}, authz...)
	apiserverArgs = append(apiserverArgs, opts.APIServerArgs...)
	apiserver, err := startProcess(filepath.Join(bins, "kube-apiserver"), filepath.Join(logDir, "kube-apiserver.log"), apiserverArgs...)
	if err != nil {
		return nil, err
	}
	cp.procs = append(cp.procs, apiserver)
	if err := cp.waitReady(60*time.Second, apiserver); err != nil {
		return nil, err
	}

	if opts.ControllerManager {
		if err := cp.startControllerManager(bins, dir, logDir, opts, clusterCIDRs); err != nil {
			return nil, err
		}
	}
	if opts.Workloads {
		if err := cp.startScheduler(bins, dir, logDir); err != nil {
			return nil, err
		}
	}
	return cp, nil
}

// workloadControllers are what running pods on kubelets takes, beyond the
// garbage collector and node IPAM.
var workloadControllers = []string{
	"daemonset-controller", "deployment-controller", "replicaset-controller", "job-controller",
	"serviceaccount-controller", "root-ca-certificate-publisher-controller",
	"node-lifecycle-controller", "pod-garbage-collector-controller", "namespace-controller",
	"endpointslice-controller", "taint-eviction-controller", "ttl-after-finished-controller",
}

func (cp *ControlPlane) startScheduler(bins, dir, logDir string) error {
	kubeconfig := filepath.Join(dir, "scheduler.kubeconfig")
	if err := cp.WriteKubeconfig(kubeconfig, Admin); err != nil {
		return err
	}
	p, err := startProcess(filepath.Join(bins, "kube-scheduler"), filepath.Join(logDir, "kube-scheduler.log"),
		"--kubeconfig="+kubeconfig, "--leader-elect=false", "--secure-port=0", "--v=1")
	if err != nil {
		return err
	}
	cp.procs = append(cp.procs, p)
	return nil
}

// writeEgressConfig writes the API server's egress selector configuration:
// traffic to the cluster through the HTTP CONNECT proxy at socket.
func writeEgressConfig(dir, socket string) (string, error) {
	conf := fmt.Sprintf(`apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
  - name: cluster
    connection:
      proxyProtocol: HTTPConnect
      transport:
        uds:
          udsName: %s
`, socket)
	path := filepath.Join(dir, "egress-selector.yaml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return "", fmt.Errorf("writing the egress selector configuration: %w", err)
	}
	return path, nil
}

func (cp *ControlPlane) startControllerManager(bins, dir, logDir string, opts Options, clusterCIDRs []netip.Prefix) error {
	kubeconfig := filepath.Join(dir, "kcm.kubeconfig")
	if err := cp.WriteKubeconfig(kubeconfig, Admin); err != nil {
		return err
	}
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--leader-elect=false",
		"--secure-port=0",
		"--service-cluster-ip-range=10.96.0.0/16",
		"--v=1",
	}
	controllers := "garbage-collector-controller"
	if opts.Workloads {
		controllers += "," + strings.Join(workloadControllers, ",")
		args = append(args, "--root-ca-file="+cp.CAFile)
	}
	if len(clusterCIDRs) > 0 {
		controllers += ",node-ipam-controller"
		args = append(args, "--allocate-node-cidrs", "--cluster-cidr="+opts.ClusterCIDR)
		// One mask flag a family: kube-controller-manager refuses the
		// family-less --node-cidr-mask-size for a dual-stack cluster.
		for _, c := range clusterCIDRs {
			if c.Addr().Is4() {
				args = append(args, "--node-cidr-mask-size-ipv4="+strconv.Itoa(cmp.Or(opts.NodeCIDRMaskSize, 24)))
			} else {
				args = append(args, "--node-cidr-mask-size-ipv6="+strconv.Itoa(cmp.Or(opts.NodeCIDRMaskSizeIPv6, 64)))
			}
		}
	}
	args = append(args, "--controllers="+controllers)
	kcm, err := startProcess(filepath.Join(bins, "kube-controller-manager"), filepath.Join(logDir, "kube-controller-manager.log"), args...)
	if err != nil {
		return err
	}
	cp.procs = append(cp.procs, kcm)
	if len(clusterCIDRs) > 0 {
		return cp.waitNodeIPAM(kcm, len(clusterCIDRs), 60*time.Second)
	}
	return nil
}

// parseClusterCIDR parses Options.ClusterCIDR: empty, one network, or one
// of each family separated by a comma.
func parseClusterCIDR(s string) ([]netip.Prefix, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	if len(parts) > 2 {
		return nil, fmt.Errorf("controlplane: ClusterCIDR %q: want one network or one of each family", s)
	}
	var cidrs []netip.Prefix
	for _, part := range parts {
		p, err := netip.ParsePrefix(strings.TrimSpace(part))
		if err != nil || p != p.Masked() {
			return nil, fmt.Errorf("controlplane: ClusterCIDR %q: %q is not a masked network", s, part)
		}
		if len(cidrs) == 1 && cidrs[0].Addr().Is4() == p.Addr().Is4() {
			return nil, fmt.Errorf("controlplane: ClusterCIDR %q: two networks of one family", s)
		}
		cidrs = append(cidrs, p)
	}
	return cidrs, nil
}

// waitNodeIPAM waits until the controller manager assigns pod CIDRs (want
// of them: one a family), by registering a probe Node and waiting for its
// spec.podCIDRs, so that tests never wait on a controller that is still
// starting.
func (cp *ControlPlane) waitNodeIPAM(kcm *process, want int, timeout time.Duration) error {
	client, err := kubernetes.NewForConfig(cp.Config(Admin))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	const probe = "controlplane-ipam-probe"
	if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: probe}}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating the node IPAM probe: %w", err)
	}
	defer client.CoreV1().Nodes().Delete(context.Background(), probe, metav1.DeleteOptions{})
	for {
		n, err := client.CoreV1().Nodes().Get(ctx, probe, metav1.GetOptions{})
		if err == nil && len(n.Spec.PodCIDRs) == want {
			return nil
		}
		select {
		case <-kcm.exited:
			return fmt.Errorf("kube-controller-manager exited: %s", kcm.tail())
		case <-ctx.Done():
			return fmt.Errorf("kube-controller-manager assigned no pod CIDR within %s: %s", timeout, kcm.tail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// writeTokens writes the static token file: the admin, and each service
// account identity with the groups a real service account token carries.
func (cp *ControlPlane) writeTokens(dir string, sas, nodes []string) (string, error) {
	if len(sas) == 0 {
		sas = DefaultServiceAccounts
	}
	var b strings.Builder
	add := func(identity, user, groups string) {
		tok := randomToken()
		cp.tokens[identity] = tok
		fmt.Fprintf(&b, "%s,%s,%s,%q\n", tok, user, "uid-"+identity, groups)
	}
	add(Admin, "admin", "system:masters")
	for _, sa := range sas {
		ns, name, ok := strings.Cut(sa, "/")
		if !ok || ns == "" || name == "" {
			return "", fmt.Errorf("service account %q: want namespace/name", sa)
		}
		add(sa, ServiceAccountUser(ns, name), "system:serviceaccounts,system:serviceaccounts:"+ns+",system:authenticated")
	}
	for _, n := range nodes {
		add(NodeIdentity(n), "system:node:"+n, "system:nodes,system:authenticated")
	}
	path := filepath.Join(dir, "tokens.csv")
	return path, os.WriteFile(path, []byte(b.String()), 0o600)
}

// ServiceAccountUser is the user name Kubernetes gives a service account.
func ServiceAccountUser(namespace, name string) string {
	return "system:serviceaccount:" + namespace + ":" + name
}

func randomToken() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// Config returns a client config authenticating as identity: Admin or one
// of the service accounts ("namespace/name").
func (cp *ControlPlane) Config(identity string) *rest.Config {
	tok, ok := cp.tokens[identity]
	if !ok {
		panic(fmt.Sprintf("controlplane: no token for identity %q", identity))
	}
	return &rest.Config{
		Host:            cp.URL,
		BearerToken:     tok,
		TLSClientConfig: rest.TLSClientConfig{CAData: cp.CAData},
		QPS:             -1, // tests must not be slowed by client-side throttling
	}
}

// WriteKubeconfig writes a kubeconfig file for identity, for binaries
// started by tests (overlayd's --kubeconfig-file).
func (cp *ControlPlane) WriteKubeconfig(path, identity string) error {
	return cp.WriteKubeconfigFor(path, identity, cp.URL)
}

// WriteKubeconfigFor is WriteKubeconfig with another server URL, e.g. a
// forwarder inside a network namespace; it must be https://127.0.0.1:<port>
// or another name the serving certificate covers.
func (cp *ControlPlane) WriteKubeconfigFor(path, identity, server string) error {
	tok, ok := cp.tokens[identity]
	if !ok {
		return fmt.Errorf("no token for identity %q", identity)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: cp.CAData}
	cfg.AuthInfos[identity] = &clientcmdapi.AuthInfo{Token: tok}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: identity}
	cfg.CurrentContext = "test"
	return clientcmd.WriteToFile(*cfg, path)
}

// waitReady polls /readyz until it answers ok, the process exits, or timeout.
func (cp *ControlPlane) waitReady(timeout time.Duration, apiserver *process) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cp.CAData)
	client := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, cp.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+cp.tokens[Admin])
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(body))
		} else {
			last = err.Error()
		}
		select {
		case <-apiserver.exited:
			return fmt.Errorf("kube-apiserver exited before ready: %s", apiserver.tail())
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready after %s (last: %s): %s", timeout, last, apiserver.tail())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop stops all processes and removes the temporary directory.
func (cp *ControlPlane) Stop() {
	cp.once.Do(func() {
		for i := len(cp.procs) - 1; i >= 0; i-- {
			cp.procs[i].stop()
		}
		if cp.Dir != "" {
			os.RemoveAll(cp.Dir)
		}
	})
}

// process is a child binary whose output goes to a log file.
type process struct {
	cmd     *exec.Cmd
	log     string
	exited  chan struct{}
	logFile *os.File
}

func startProcess(bin, logPath string, args ...string) (*process, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// The child dies with the test binary even if the test is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &process{cmd: cmd, log: logPath, exited: make(chan struct{}), logFile: f}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the starting thread ends, not the process:
		// hold this thread until the child has exited, so that no other
		// code ending a locked thread can kill the control plane.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			f.Close()
			started <- fmt.Errorf("starting %s: %w", bin, err)
			return
		}
		started <- nil
		cmd.Wait()
		f.Close()
		close(p.exited)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

func (p *process) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// tail returns the end of the process's log, for error messages.
func (p *process) tail() string {
	data, _ := os.ReadFile(p.log)
	if len(data) > 2000 {
		data = data[len(data)-2000:]
	}
	return fmt.Sprintf("%s log %s:\n%s", filepath.Base(p.cmd.Path), p.log, data)
}

// freePorts reserves n distinct free loopback ports by binding and
// releasing them.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
