package nodes

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a long-running program: a node's init, or a daemon started
// inside a node (kubelet, containerd). Its output goes to a log file.
type proc struct {
	name   string
	log    string
	cmd    *exec.Cmd
	exited chan struct{}

	mu  sync.Mutex
	err error
}

// startProc starts cmd with its output appended to logPath. The child is
// killed when the test process dies: Pdeathsig fires when the starting
// thread ends, so that thread is held until the child exits.
func startProc(name string, cmd *exec.Cmd, logPath string) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = f, f
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	p := &proc{name: name, log: logPath, cmd: cmd, exited: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			f.Close()
			started <- fmt.Errorf("starting %s: %w", name, err)
			return
		}
		started <- nil
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.exited)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func (p *proc) exitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// kill sends SIGKILL and waits for the exit.
func (p *proc) kill() {
	if p.running() {
		p.cmd.Process.Kill()
	}
	<-p.exited
}

// tail is the end of the log, labelled, for failure messages.
func (p *proc) tail(n int) string {
	data, _ := os.ReadFile(p.log)
	s := string(data)
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return fmt.Sprintf("--- %s (%s):\n%s", p.name, p.log, s)
}

// nsenter is the command that runs argv in every namespace of the node
// whose init is pid. nsenter, not `ip netns exec`: that one remounts /sys
// and hides the cgroup hierarchies from the kubelet.
func nsenter(ctx context.Context, pid int, env []string, argv ...string) *exec.Cmd {
	args := append([]string{"--target", strconv.Itoa(pid), "--mount", "--uts", "--net", "--pid", "--"}, argv...)
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	cmd.Env = append(baseEnv(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// baseEnv is the environment node processes start with: the test
// process's, with the sbin directories on PATH (CNI plugins and overlayd
// run iptables).
func baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, initEnv+"=") || strings.HasPrefix(kv, "PATH=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
}

// waitFile polls until path exists or the process exits.
func waitFile(ctx context.Context, path string, p *proc, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited (%v) before %s appeared\n%s", p.name, p.exitErr(), path, p.tail(2000))
		case <-deadline:
			return fmt.Errorf("%s: no %s after %s\n%s", p.name, path, timeout, p.tail(2000))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
