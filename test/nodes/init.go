package nodes

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// A node is a network namespace of the lab plus namespaces of its own for
// mounts, PIDs and the host name, held by an init process: the test binary
// itself, re-executed with initEnv set. The init makes the kubelet's and
// containerd's fixed paths private to the node (bind mounts of the node's
// directories, a tmpfs on /run), mounts a /proc of the node's PID
// namespace, then reaps orphans until it is killed. When it dies the
// kernel kills every process of the node (kubelet, containerd, shims,
// containers), and the mount namespace goes with its mounts: nothing a
// kubelet mounts is ever seen by the host.

// initEnv carries the init's configuration (JSON of initConfig).
const initEnv = "OVERLAYD_NODE_INIT"

// initConfig is what the init sets up.
type initConfig struct {
	Hostname string
	// Binds maps a path of the node (e.g. /var/lib/kubelet) to the host
	// directory that backs it.
	Binds map[string]string
	// Ready is created once the mounts are in place.
	Ready string
}

// privatePaths are the paths a kubelet, containerd and the pods' hostPath
// volumes use that must be the node's own; each is backed by a directory
// under the node's root. /run is a tmpfs of its own (containerd's
// sockets, shims' sockets, runc's state, pod network namespaces,
// /run/flannel, /run/xtables.lock).
var privatePaths = []string{
	"/var/lib/kubelet", "/var/lib/containerd", "/var/log/pods", "/var/log/containers",
	"/etc/cni/net.d", "/opt/cni/bin", "/var/lib/cni", "/var/lib/calico", "/etc/kubernetes",
}

func init() {
	conf := os.Getenv(initEnv)
	if conf == "" {
		return
	}
	// This process is the node's init, not a test binary.
	if err := runInit(conf); err != nil {
		fmt.Fprintf(os.Stderr, "node init: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runInit(raw string) error {
	var c initConfig
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		return fmt.Errorf("parsing %s: %w", initEnv, err)
	}
	os.Unsetenv(initEnv)
	if os.Getpid() != 1 {
		return fmt.Errorf("pid %d: the node init must be PID 1 of a PID namespace of its own", os.Getpid())
	}
	if err := setupMounts(c); err != nil {
		return err
	}
	if err := unix.Sethostname([]byte(c.Hostname)); err != nil {
		return fmt.Errorf("setting the host name: %w", err)
	}
	if err := os.WriteFile(c.Ready, nil, 0o644); err != nil {
		return err
	}
	reap()
	return nil
}

func setupMounts(c initConfig) error {
	// Slave: the host's mounts and unmounts still reach the node, nothing
	// mounted in the node reaches the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("making / a slave mount: %w", err)
	}
	// The lab's namespace files would be hidden under the node's /run; drop
	// them, so the node holds no reference to any network namespace.
	if err := unix.Unmount("/run/netns", unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("detaching /run/netns: %w", err)
	}
	if err := unix.Mount("tmpfs", "/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=755,size=256m"); err != nil {
		return fmt.Errorf("mounting a tmpfs on /run: %w", err)
	}
	for _, d := range []string{"/run/lock", "/run/netns"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	for path, backing := range c.Binds {
		if err := os.MkdirAll(path, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", path, err)
		}
		if err := unix.Mount(backing, path, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mounting %s on %s: %w", backing, path, err)
		}
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mounting the node's /proc: %w", err)
	}
	return nil
}

// reap waits for children until SIGTERM: every orphan of the node (shims
// that daemonized, containers' leftovers) is re-parented to PID 1.
func reap() {
	term := make(chan os.Signal, 1)
	signal.Notify(term, unix.SIGTERM, unix.SIGINT)
	child := make(chan os.Signal, 16)
	signal.Notify(child, unix.SIGCHLD)
	for {
		select {
		case <-term:
			return
		case <-child:
			for {
				var ws unix.WaitStatus
				pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		}
	}
}

// nodeBinds are the init's bind mounts for a node rooted at root.
func nodeBinds(root string) (map[string]string, error) {
	binds := map[string]string{}
	for _, p := range privatePaths {
		backing := filepath.Join(root, strings.TrimPrefix(p, "/"))
		if err := os.MkdirAll(backing, 0o755); err != nil {
			return nil, err
		}
		binds[p] = backing
	}
	return binds, nil
}
