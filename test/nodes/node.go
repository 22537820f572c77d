package nodes

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/test/controlplane"
	"github.com/overlayd/overlayd/test/lab"
)

// Node is a Kubernetes node with a real kubelet and containerd: a lab node
// (its network namespace, underlay address and way to the API server) with
// namespaces of its own for mounts, PIDs and the host name.
type Node struct {
	*lab.Node
	// Root backs the node's private paths: /var/lib/kubelet is
	// <Root>/var/lib/kubelet, and so on (privatePaths).
	Root string
	// CgroupRoot is the kubelet's cgroup root, in every cgroup hierarchy.
	CgroupRoot string
	// KubeletKubeconfig authenticates as the node (system:node:<name>).
	KubeletKubeconfig string

	init       *proc
	pidNS      uint64 // inode of the node's PID namespace
	containerd *proc
	kubelet    *proc
}

func (n *Node) initPid() int { return n.init.cmd.Process.Pid }

// RootPath is the node's / as seen from the host, for files under the
// node's private /run: /proc/<init>/root.
func (n *Node) RootPath() string { return "/proc/" + strconv.Itoa(n.initPid()) + "/root" }

// Command runs argv inside the node (every namespace of it), e.g. ctr.
func (n *Node) Command(ctx context.Context, argv ...string) *exec.Cmd {
	return nsenter(ctx, n.initPid(), nil, argv...)
}

// startInit starts the node's init: the test binary again, as PID 1 of
// new mount, PID and UTS namespaces, in the node's network namespace.
func (n *Node) startInit(ctx context.Context) error {
	binds, err := nodeBinds(n.Root)
	if err != nil {
		return err
	}
	ready := filepath.Join(n.Dir, "init.ready")
	conf, err := json.Marshal(initConfig{Hostname: n.Name, Binds: binds, Ready: ready})
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command("nsenter", "--net="+n.Path(), "--", self)
	cmd.Env = append(baseEnv(), initEnv+"="+string(conf))
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS}
	p, err := startProc(n.Name+"/init", cmd, filepath.Join(n.Dir, "init.log"))
	if err != nil {
		return err
	}
	n.init = p
	if err := waitFile(ctx, ready, p, 10*time.Second); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/pid", n.initPid()), &st); err != nil {
		return fmt.Errorf("%s: the init's PID namespace: %w", n.Name, err)
	}
	n.pidNS = st.Ino
	return nil
}

// serviceVIP gives the node the kubernetes Service's address, forwarded to
// the API server: what kube-proxy provides on a node, so that pods (and
// overlayd in its DaemonSet) reach the API server with their in-cluster
// configuration. No kube-proxy runs here.
func (n *Node) serviceVIP() error {
	nl, err := n.Netlink()
	if err != nil {
		return err
	}
	defer nl.Close()
	lo, err := nl.LinkByName("lo")
	if err != nil {
		return err
	}
	ip := net.ParseIP(controlplane.KubernetesServiceIP)
	if err := nl.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}}); err != nil {
		return fmt.Errorf("%s: adding %s to lo: %w", n.Name, ip, err)
	}
	return n.ForwardAPI(net.JoinHostPort(ip.String(), "443"))
}

// stop kills the node's init, and with it every process of the node, and
// waits until none is left, so that the node's mounts are gone.
func (n *Node) stop() error {
	if n.init == nil {
		return nil
	}
	n.init.kill()
	for _, p := range []*proc{n.kubelet, n.containerd} {
		if p != nil {
			p.kill()
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := processesInPIDNS(n.pidNS)
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: processes %v still in the node's PID namespace", n.Name, left)
		}
		for _, pid := range left {
			unix.Kill(pid, unix.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// processesInPIDNS lists the (host) PIDs of processes in a PID namespace.
func processesInPIDNS(ino uint64) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat("/proc/"+e.Name()+"/ns/pid", &st) == nil && st.Ino == ino && !isZombie(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func isZombie(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(data)
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == ')' {
			return i+2 < len(s) && s[i+2] == 'Z'
		}
	}
	return false
}
