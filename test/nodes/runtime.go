package nodes

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// ContainerdSocket is containerd's socket inside a node.
const ContainerdSocket = "/run/containerd/containerd.sock"

// containerdConfig is containerd 1.6's configuration for a node: the CRI
// plugin with the local pause image, cgroupfs, runc from the node
// dependencies, the node's CNI directories. restrict_oom_score_adj: root
// here lacks CAP_SYS_RESOURCE, and runc fails to lower a container's OOM
// score without it ("can't get final child's PID from pipe").
func containerdConfig(runc string) string {
	return fmt.Sprintf(`version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %[1]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[2]q
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = %[3]q
        Root = "/run/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
`, ContainerdSocket, PauseImage, runc)
}

// kubeletConfig is the KubeletConfiguration of a node: cgroupfs on this
// machine's cgroup v1 under a cgroup root of the node's own, the serving
// address on the underlay, webhook authentication and authorization with
// the control plane's CA for the API server's client certificate, and
// what a machine without swap accounting, DNS or much free disk needs.
// syncFrequency is short so that ConfigMap changes reach pods in seconds
// (the default is a minute).
func kubeletConfig(nodeIP, cgroupRoot, clientCA string) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %[1]s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
containerRuntimeEndpoint: unix://%[4]s
cgroupDriver: cgroupfs
cgroupRoot: %[2]s
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
enforceNodeAllocatable: []
localStorageCapacityIsolation: false
makeIPTablesUtilChains: false
resolvConf: ""
syncFrequency: 2s
fileCheckFrequency: 2s
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 1Mi
  nodefs.available: "1%%"
  nodefs.inodesFree: "1%%"
  imagefs.available: "1%%"
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %[3]s
authorization:
  mode: Webhook
`, nodeIP, cgroupRoot, clientCA, ContainerdSocket)
}

// startRuntime writes containerd's configuration and starts it in the node.
func (n *Node) startRuntime(ctx context.Context, bins string) error {
	conf := filepath.Join(n.Dir, "containerd.toml")
	if err := os.WriteFile(conf, []byte(containerdConfig(filepath.Join(bins, "runc"))), 0o644); err != nil {
		return err
	}
	// containerd finds containerd-shim-runc-v2 on its PATH.
	cmd := nsenter(context.Background(), n.initPid(), nil, filepath.Join(bins, "containerd"), "--config", conf)
	cmd.Env = append(cmd.Env, "PATH="+bins+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	p, err := startProc(n.Name+"/containerd", cmd, filepath.Join(n.Dir, "containerd.log"))
	if err != nil {
		return err
	}
	n.containerd = p
	return waitFile(ctx, filepath.Join(n.RootPath(), ContainerdSocket), p, 30*time.Second)
}

// importImages loads the archive into the node's containerd, in the
// namespace the CRI plugin uses.
func (n *Node) importImages(ctx context.Context, bins, archive string) error {
	out, err := n.Command(ctx, filepath.Join(bins, "ctr"), "--address", ContainerdSocket, "-n", "k8s.io",
		"images", "import", archive).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: importing images: %v\n%s", n.Name, err, out)
	}
	return nil
}

// startKubelet writes the kubelet's configuration and kubeconfig and starts it.
func (n *Node) startKubelet(bins, clientCA string) error {
	conf := filepath.Join(n.Dir, "kubelet.yaml")
	if err := os.WriteFile(conf, []byte(kubeletConfig(n.IP.String(), n.CgroupRoot, clientCA)), 0o644); err != nil {
		return err
	}
	cmd := nsenter(context.Background(), n.initPid(), nil, filepath.Join(bins, "kubelet"),
		"--config="+conf,
		"--kubeconfig="+n.KubeletKubeconfig,
		"--hostname-override="+n.Name,
		"--node-ip="+n.IP.String(),
		"--v=1",
	)
	p, err := startProc(n.Name+"/kubelet", cmd, filepath.Join(n.Dir, "kubelet.log"))
	if err != nil {
		return err
	}
	n.kubelet = p
	return nil
}
