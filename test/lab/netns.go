package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/pkg/kernel"
)

// Host is one network namespace of the lab: a node, a pod, the gateway, the
// external host or the underlay. Commands, sockets and netlink handles can
// be opened inside it.
type Host struct {
	NS  string     // network namespace name, as in `ip netns exec NS ...`
	IP  netip.Addr // main IPv4 address: underlay address of a node, a pod's address
	IP6 netip.Addr // main IPv6 address, the same for IPv6; the zero Addr if none

	lab     *Lab
	path    string // set for a namespace the lab did not create (Foreign)
	deleted atomic.Bool
}

// Foreign is a Host for a network namespace the lab did not create, found
// at path (e.g. a pod's that a container runtime made, /proc/<pid>/ns/net):
// for Do, Dial, Listen, Netlink, Ping and StartPinger. No lab deletes it.
func Foreign(name, path string) *Host { return &Host{NS: name, path: path} }

// Path is the namespace's bind mount, e.g. for CNI_NETNS.
func (h *Host) Path() string {
	if h.path != "" {
		return h.path
	}
	return filepath.Join(netnsDir, h.NS)
}

func (h *Host) String() string { return h.NS }

// newHost creates a namespace <prefix>-<id>-<role> with lo up.
func (l *Lab) newHost(role string) (*Host, error) {
	h := &Host{}
	return h, l.initHost(h, role)
}

// initHost creates h's namespace, tracked for Close, with lo up.
func (l *Lab) initHost(h *Host, role string) error {
	h.NS, h.lab = l.namePrefix()+role, l
	err := kernel.InNamespace(netns.None(), func() error {
		// NewNamed moves the thread into the new namespace; InNamespace
		// moves it back before the thread serves anyone else.
		ns, err := netns.NewNamed(h.NS)
		if err == nil {
			ns.Close()
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("creating network namespace %s: %w", h.NS, err)
	}
	if err := l.track(h); err != nil {
		h.delete()
		return err
	}
	nl, err := h.Netlink()
	if err != nil {
		return err
	}
	defer nl.Close()
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("%s: setting lo up: %w", h.NS, err)
	}
	return nil
}

// Netlink returns a netlink handle operating inside the namespace. Close it.
func (h *Host) Netlink() (*netlink.Handle, error) {
	ns, err := netns.GetFromPath(h.Path())
	if err != nil {
		return nil, fmt.Errorf("opening namespace %s: %w", h.NS, err)
	}
	defer ns.Close()
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", h.NS, err)
	}
	return nl, nil
}

// Do runs fn on an OS thread switched into the namespace. Sockets fn opens
// stay in the namespace after Do returns. fn must not start processes (use
// Exec or Start) nor rely on goroutines it starts being in the namespace.
func (h *Host) Do(fn func() error) error {
	target, err := netns.GetFromPath(h.Path())
	if err != nil {
		return fmt.Errorf("opening namespace %s: %w", h.NS, err)
	}
	defer target.Close()
	return kernel.InNamespace(target, fn)
}

// Dial connects from inside the namespace.
func (h *Host) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var conn net.Conn
	err := h.Do(func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dialing %s from %s: %w", address, h.NS, err)
	}
	return conn, nil
}

// Listen opens a listener inside the namespace.
func (h *Host) Listen(network, address string) (net.Listener, error) {
	var ln net.Listener
	err := h.Do(func() error {
		var err error
		ln, err = net.Listen(network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on %s in %s: %w", address, h.NS, err)
	}
	return ln, nil
}

// SetSysctl writes a sysctl of the namespace, e.g. "net/ipv4/ip_forward".
// /proc/sys/net belongs to the namespace of the thread that opens it.
func (h *Host) SetSysctl(key, value string) error {
	return h.Do(func() error {
		path := filepath.Join("/proc/sys", key)
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("%s: writing %s: %w", h.NS, path, err)
		}
		return nil
	})
}

// Sysctl reads a sysctl of the namespace.
func (h *Host) Sysctl(key string) (string, error) {
	var v string
	err := h.Do(func() error {
		data, err := os.ReadFile(filepath.Join("/proc/sys", key))
		v = strings.TrimSpace(string(data))
		return err
	})
	return v, err
}

// Command returns an exec.Cmd running argv inside the namespace through
// `ip netns exec`, which also remounts /sys for the namespace. The child is
// killed if the test process dies.
func (h *Host) Command(ctx context.Context, argv ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, ipBinary(), append([]string{"netns", "exec", h.NS}, argv...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// Exec runs argv inside the namespace and returns its combined output. A
// failure's error carries the output.
func (h *Host) Exec(ctx context.Context, argv ...string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("exec: no command")
	}
	out, err := h.Command(ctx, argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %s: %w: %s", h.NS, strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Start starts a long-running process inside the namespace; its output goes
// to <lab dir>/<namespace>/<name>.log. It is stopped when the lab closes.
func (h *Host) Start(name string, argv ...string) (*Process, error) {
	return h.StartWithEnv(name, nil, argv...)
}

// StartWithEnv is Start with extra environment variables ("KEY=value")
// added to the test process's own.
func (h *Host) StartWithEnv(name string, env []string, argv ...string) (*Process, error) {
	if h.lab == nil {
		return nil, errors.New("start: host has no lab")
	}
	return h.lab.startProcess(h, name, env, argv)
}

// delete kills every process inside the namespace and removes it.
func (h *Host) delete() error {
	if h.deleted.Load() {
		return nil
	}
	path := h.Path()
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		h.deleted.Store(true)
		return nil
	}
	killIn(path)
	if err := netns.DeleteNamed(h.NS); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("deleting network namespace %s: %w", h.NS, err)
	}
	h.deleted.Store(true)
	return nil
}

// killIn SIGKILLs every process (other than this one) whose network
// namespace is the one bound at path, and waits briefly for them to go.
func killIn(path string) {
	var target unix.Stat_t
	if err := unix.Stat(path, &target); err != nil {
		return
	}
	self := os.Getpid()
	var killed []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(filepath.Join("/proc", e.Name(), "ns", "net"), &st) != nil {
			continue
		}
		if st.Dev == target.Dev && st.Ino == target.Ino {
			if unix.Kill(pid, unix.SIGKILL) == nil {
				killed = append(killed, pid)
			}
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for _, pid := range killed {
		for time.Now().Before(deadline) && unix.Kill(pid, 0) == nil && !isZombie(pid) {
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func isZombie(pid int) bool {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	// The state follows the command name in parentheses.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// ipBinary finds iproute2's ip; /usr/sbin may be missing from a test's PATH.
var ipBinary = sync.OnceValue(func() string {
	if p, err := exec.LookPath("ip"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "ip"
})
