package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/overlayd/overlayd/test/lab"
)

// AgentArgv is the command line of the node's agent: the flags every agent
// gets (its kubeconfig, net-conf.json, subnet.env and health server), then
// Options.Args.
func (c *Cluster) AgentArgv(n *lab.Node) []string {
	args := []string{c.opts.Overlayd,
		"--kubeconfig-file", n.Kubeconfig,
		"--net-config-path", c.NetConfPath(n),
		"--subnet-file", n.SubnetEnv,
		"--healthz-ip", "127.0.0.1", "--healthz-port", strconv.Itoa(HealthzPort),
	}
	return append(args, c.opts.Args...)
}

// StartAgent starts overlayd on the node with NODE_NAME set, as the
// DaemonSet does, or starts the node's stopped agent again with the
// current AgentArgv.
func (c *Cluster) StartAgent(n *lab.Node) (*lab.Process, error) {
	if c.opts.Overlayd == "" {
		return nil, errors.New("cluster: Options.Overlayd is required to start agents")
	}
	if p := c.Agents[n.Name]; p != nil {
		p.Argv = c.AgentArgv(n)
		if err := p.Start(); err != nil {
			return nil, fmt.Errorf("starting overlayd on %s again: %w", n.Name, err)
		}
		return p, nil
	}
	p, err := n.StartWithEnv("overlayd", []string{"NODE_NAME=" + n.Name}, c.AgentArgv(n)...)
	if err != nil {
		return nil, fmt.Errorf("starting overlayd on %s: %w", n.Name, err)
	}
	c.Agents[n.Name] = p
	return p, nil
}

// RestartAgent stops the node's agent and starts it with args in place of
// Options.Args; agents started later get them too. It does not wait for
// readiness.
func (c *Cluster) RestartAgent(n *lab.Node, args []string) error {
	p := c.Agents[n.Name]
	if p == nil {
		return fmt.Errorf("no agent on %s", n.Name)
	}
	if err := p.Stop(); err != nil && p.Running() {
		return fmt.Errorf("stopping overlayd on %s: %w", n.Name, err)
	}
	c.opts.Args = args
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
			exited = fmt.Errorf("overlayd on %s exited: %v", n.Name, p.ExitErr())
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
		return at, fmt.Errorf("overlayd on %s ready: %w", n.Name, err)
	}
	return at, nil
}

// Health fetches path from the node's agent's health server, inside the
// node, and returns the status code and body.
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
