package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is a long-running program inside a lab namespace, e.g. overlayd on
// a node. Its output (stdout and stderr, every run) is appended to LogPath.
// It can be stopped, killed and started again; the lab stops it on Close.
type Process struct {
	Name    string
	Host    *Host
	Argv    []string
	Env     []string // added to the test process's environment
	LogPath string

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	exitErr error
	runs    int
}

// StopTimeout is how long Stop waits after SIGTERM before SIGKILL.
const StopTimeout = 10 * time.Second

var procNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

func (l *Lab) startProcess(h *Host, name string, env, argv []string) (*Process, error) {
	if !procNameRE.MatchString(name) {
		return nil, fmt.Errorf("process name %q: want letters, digits, '.', '_' or '-'", name)
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("process %s: no command", name)
	}
	dir := filepath.Join(l.Dir, strings.TrimPrefix(h.NS, l.namePrefix()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	p := &Process{Name: name, Host: h, Argv: argv, Env: env, LogPath: filepath.Join(dir, name+".log")}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, errors.New("lab is closed")
	}
	for _, other := range l.procs {
		if other.Host == h && other.Name == name {
			l.mu.Unlock()
			return nil, fmt.Errorf("%s: a process named %s exists already", h.NS, name)
		}
	}
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	if err := p.Start(); err != nil {
		return nil, err
	}
	return p, nil
}

// Start runs the process again after it stopped. It fails if it is running.
func (p *Process) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !isClosed(p.exited) {
		return fmt.Errorf("%s in %s is running (pid %d)", p.Name, p.Host.NS, p.cmd.Process.Pid)
	}
	log, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("opening log of %s: %w", p.Name, err)
	}
	p.runs++
	fmt.Fprintf(log, "=== lab: run %d in %s: %s\n", p.runs, p.Host.NS, strings.Join(p.Argv, " "))
	// Not CommandContext: the process outlives any one call.
	cmd := p.Host.Command(context.Background(), p.Argv...)
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.Stdout, cmd.Stderr = log, log
	exited := make(chan struct{})
	started := make(chan error, 1)
	go func() {
		// The child's Pdeathsig fires when the thread that started it
		// ends, not the process: keep that thread for this goroutine
		// until the child has exited.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			log.Close()
			started <- fmt.Errorf("starting %s in %s: %w", p.Name, p.Host.NS, err)
			return
		}
		started <- nil
		err := cmd.Wait()
		log.Close()
		p.mu.Lock()
		p.exitErr = err
		p.mu.Unlock()
		close(exited)
	}()
	if err := <-started; err != nil {
		return err
	}
	p.cmd, p.exited, p.exitErr = cmd, exited, nil
	return nil
}

// Pid of the current run; `ip netns exec` execs the program, so this is the
// program itself. 0 before the first start.
func (p *Process) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Running reports whether the current run has not exited.
func (p *Process) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil && !isClosed(p.exited)
}

// Exited is closed when the current run exits.
func (p *Process) Exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exited
}

// ExitErr is how the last run ended (nil: exit status 0, or still running).
func (p *Process) ExitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitErr
}

// Signal sends sig to the current run.
func (p *Process) Signal(sig os.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || isClosed(p.exited) {
		return fmt.Errorf("%s in %s is not running", p.Name, p.Host.NS)
	}
	return p.cmd.Process.Signal(sig)
}

// Wait waits for the current run to exit and returns how it ended.
func (p *Process) Wait(ctx context.Context) error {
	exited := p.Exited()
	if exited == nil {
		return fmt.Errorf("%s was never started", p.Name)
	}
	select {
	case <-exited:
		return p.ExitErr()
	case <-ctx.Done():
		return fmt.Errorf("waiting for %s in %s to exit: %w", p.Name, p.Host.NS, ctx.Err())
	}
}

// Stop sends SIGTERM and waits for the exit, sending SIGKILL after
// StopTimeout. It returns how the run ended, or an error saying SIGKILL was
// needed. Stopping a stopped process returns its last exit error.
func (p *Process) Stop() error { return p.stop(StopTimeout) }

func (p *Process) stop(timeout time.Duration) error {
	exited := p.Exited()
	if exited == nil {
		return nil
	}
	if isClosed(exited) {
		return p.ExitErr()
	}
	p.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		return p.ExitErr()
	case <-time.After(timeout):
	}
	p.Signal(syscall.SIGKILL)
	<-exited
	return fmt.Errorf("%s in %s did not exit within %s of SIGTERM and was killed", p.Name, p.Host.NS, timeout)
}

// Kill sends SIGKILL (a crash) and waits for the exit.
func (p *Process) Kill() error {
	exited := p.Exited()
	if exited == nil || isClosed(exited) {
		return nil
	}
	p.Signal(syscall.SIGKILL)
	<-exited
	return nil
}

// Restart stops the process gracefully (see Stop) and starts it again.
func (p *Process) Restart() error {
	if err := p.Stop(); err != nil && !isExitError(err) {
		return err
	}
	return p.Start()
}

// Log returns everything the process has written, across runs.
func (p *Process) Log() string {
	data, _ := os.ReadFile(p.LogPath)
	return string(data)
}

// Tail returns the last n bytes of the log, labelled, for failure messages.
func (p *Process) Tail(n int) string {
	data := p.Log()
	if len(data) > n {
		data = "..." + data[len(data)-n:]
	}
	return fmt.Sprintf("--- %s in %s (%s):\n%s", p.Name, p.Host.NS, p.LogPath, data)
}

// WaitLog polls the log until it contains substr, the context ends, or the
// process exits without having written it.
func (p *Process) WaitLog(ctx context.Context, substr string) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if strings.Contains(p.Log(), substr) {
			return nil
		}
		exited := p.Exited()
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s in %s: %q not in log: %w\n%s", p.Name, p.Host.NS, substr, ctx.Err(), p.Tail(2000))
		case <-exited:
			if strings.Contains(p.Log(), substr) {
				return nil
			}
			return fmt.Errorf("%s in %s exited (%v) before logging %q\n%s", p.Name, p.Host.NS, p.ExitErr(), substr, p.Tail(2000))
		case <-tick.C:
		}
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func isExitError(err error) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee)
}
