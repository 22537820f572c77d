package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/overlayd/overlayd/test/lab"
)

// The programs a node's agent can be (lab.Process.Name of the agent).
const (
	Overlayd = "overlayd"
	Flanneld = "flanneld"
)

// AgentArgv is the command line of the node's overlayd: the flags every
// agent gets (its kubeconfig, net-conf.json, subnet.env and health server),
// then Options.Args and the node's Options.NodeArgs.
func (c *Cluster) AgentArgv(n *lab.Node) []string {
	args := []string{c.opts.Overlayd,
		"--kubeconfig-file", n.Kubeconfig,
		"--net-config-path", c.NetConfPath(n),
		"--subnet-file", n.SubnetEnv,
		"--healthz-ip", "127.0.0.1", "--healthz-port", strconv.Itoa(HealthzPort),
	}
	return slices.Concat(args, c.opts.Args, c.opts.NodeArgs[n.Name])
}

// WireGuardKeyFile is the node's WireGuard private key file: one per node,
// as every node of the lab shares the host's file system.
func WireGuardKeyFile(n *lab.Node) string { return filepath.Join(n.Dir, "wgkey") }

// AgentEnv is the environment of the node's agent, overlayd or flanneld,
// as the DaemonSet gives it: NODE_NAME, and the node's own WireGuard key
// file in WIREGUARD_KEY_FILE, which both read (so the two get the same
// flags).
func AgentEnv(n *lab.Node) []string {
	return []string{"NODE_NAME=" + n.Name, "WIREGUARD_KEY_FILE=" + WireGuardKeyFile(n)}
}

// AgentProgram is what the node's agent runs, or runs when it next
// starts: Overlayd or Flanneld.
func (c *Cluster) AgentProgram(n *lab.Node) string {
	if p := c.programs[n.Name]; p != "" {
		return p
	}
	return Overlayd
}

// UseAgent makes program (Overlayd or Flanneld) the node's agent from its
// next StartAgent on. The current agent must be stopped; what it left in
// the node's kernel stays there.
func (c *Cluster) UseAgent(n *lab.Node, program string) error {
	if program != Overlayd && program != Flanneld {
		return fmt.Errorf("cluster: no agent program %q (want %s or %s)", program, Overlayd, Flanneld)
	}
	if p := c.Agents[n.Name]; p != nil && p.Running() && p.Name != program {
		return fmt.Errorf("cluster: %s still runs on %s; stop it first", p.Name, n.Name)
	}
	c.programs[n.Name] = program
	return nil
}

// StartAgent starts the node's agent with AgentEnv, as the DaemonSet
// does: overlayd (AgentArgv) or, on a flanneld node, flanneld
// (FlanneldArgv) once the node's Node has a podCIDR (flanneld exits at once
// without one). A stopped agent is started again with its current command
// line. Its log is the lab process's (<lab dir>/<node>/<program>.log).
func (c *Cluster) StartAgent(n *lab.Node) (*lab.Process, error) {
	program := c.AgentProgram(n)
	var argv []string
	switch program {
	case Flanneld:
		if c.opts.Flanneld == "" {
			bin, err := FlanneldBinary()
			if err != nil {
				return nil, err
			}
			c.opts.Flanneld = bin
		}
		if _, err := c.WaitPodCIDR(context.Background(), n, PodCIDRTimeout); err != nil {
			return nil, fmt.Errorf("starting flanneld on %s: %w", n.Name, err)
		}
		argv = c.FlanneldArgv(n)
	default:
		if c.opts.Overlayd == "" {
			return nil, errors.New("cluster: Options.Overlayd is required to start agents")
		}
		argv = c.AgentArgv(n)
	}
	if cur := c.Agents[n.Name]; cur != nil && cur.Running() {
		if cur.Name == program {
			return nil, fmt.Errorf("starting %s on %s: it is running (pid %d)", program, n.Name, cur.Pid())
		}
		return nil, fmt.Errorf("starting %s on %s: %s still runs there", program, n.Name, cur.Name)
	}
	key := n.Name + "/" + program
	if p := c.agentProcs[key]; p != nil {
		p.Argv = argv
		if err := p.Start(); err != nil {
			return nil, fmt.Errorf("starting %s on %s again: %w", program, n.Name, err)
		}
		c.Agents[n.Name] = p
		return p, nil
	}
	env := AgentEnv(n)
	if program == Flanneld {
		env = append(env, "PATH="+sbinPath()) // flanneld runs iptables
	}
	p, err := n.StartWithEnv(program, env, argv...)
	if err != nil {
		return nil, fmt.Errorf("starting %s on %s: %w", program, n.Name, err)
	}
	c.agentProcs[key] = p
	c.Agents[n.Name] = p
	return p, nil
}

// RestartAgent stops the node's agent and starts it with args in place of
// Options.Args (Options.FlanneldArgs on a flanneld node); agents of that
// program started later get them too. It does not wait for readiness.
func (c *Cluster) RestartAgent(n *lab.Node, args []string) error {
	p := c.Agents[n.Name]
	if p == nil {
		return fmt.Errorf("no agent on %s", n.Name)
	}
	if err := p.Stop(); err != nil && p.Running() {
		return fmt.Errorf("stopping %s on %s: %w", p.Name, n.Name, err)
	}
	if p.Name == Flanneld {
		c.opts.FlanneldArgs = args
	} else {
		c.opts.Args = args
	}
	_, err := c.StartAgent(n)
	return err
}

// WaitReady waits until the node's agent answers /readyz with 200 and
// returns when it did. It fails at once if the agent exits.
func (c *Cluster) WaitReady(ctx context.Context, n *lab.Node, timeout time.Duration) (time.Time, error) {
	p := c.Agents[n.Name]
	if p == nil {
		return time.Time{}, fmt.Errorf("no agent on %s", n.Name)
	}
	var at time.Time
	var exited error
	err := Poll(ctx, timeout, c.opts.PollInterval, func() (bool, string) {
		if !p.Running() {
			// Nothing starts it again: stop polling.
			exited = fmt.Errorf("%s on %s exited: %v", p.Name, n.Name, p.ExitErr())
			return true, ""
		}
		code, body, err := c.Health(ctx, n, "/readyz")
		if err != nil {
			return false, err.Error()
		}
		at = time.Now()
		return code == http.StatusOK, strings.TrimSpace(body)
	})
	if exited != nil {
		return at, exited
	}
	if err != nil {
		return at, fmt.Errorf("%s on %s ready: %w", p.Name, n.Name, err)
	}
	return at, nil
}

// Health fetches path from the node's agent's health server, inside the
// node, and returns the status code and body. flanneld's serves /healthz
// and /readyz only.
func (c *Cluster) Health(ctx context.Context, n *lab.Node, path string) (int, string, error) {
	client := HTTPClient(n, c.opts.HealthTimeout)
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", HealthzPort, path), nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// Dialer opens connections from inside a network namespace, e.g. a
// *lab.Node or *lab.Pod.
type Dialer interface {
	Dial(ctx context.Context, network, address string) (net.Conn, error)
}

// HTTPClient is an HTTP client whose connections start inside d's network
// namespace: 127.0.0.1 is the node's own loopback. Close its idle
// connections when done.
func HTTPClient(d Dialer, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout:   timeout,
		Transport: &http.Transport{DialContext: d.Dial},
	}
}
