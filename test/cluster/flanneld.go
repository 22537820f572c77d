package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/overlayd/overlayd/test/controlplane"
	"github.com/overlayd/overlayd/test/lab"
)

// FlanneldBinary is the real flanneld the tests run beside overlayd:
// flanneld in the test binaries' directory ($OVERLAYD_TEST_BIN_DIR, else
// hack/tools/bin), built by `make flannel-bin` (part of `make test-bins`)
// from hack/tools/flannel.
func FlanneldBinary() (string, error) {
	dir, err := controlplane.BinDir()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "flanneld")
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("cluster: flanneld missing in %s (run `make flannel-bin`, or set OVERLAYD_TEST_BIN_DIR): %w", dir, err)
	}
	return bin, nil
}

// FlanneldArgv is the command line of the node's flanneld, as flannel's
// DaemonSet runs it (--kube-subnet-mgr, the default annotation prefix
// flannel.alpha.coreos.com) with the node's kubeconfig, net-conf.json
// (read once, at start), subnet.env, underlay interface and a health
// server where overlayd's is; then Options.FlanneldArgs and the node's
// Options.NodeArgs. Its /readyz answers 200 once subnet.env is written and
// its iptables rules are in place.
func (c *Cluster) FlanneldArgv(n *lab.Node) []string {
	args := []string{c.opts.Flanneld,
		"--kube-subnet-mgr",
		"--kubeconfig-file", n.Kubeconfig,
		"--net-config-path", c.NetConfPath(n),
		"--subnet-file", n.SubnetEnv,
		"--iface", lab.UnderlayIface,
		"--healthz-ip", "127.0.0.1", "--healthz-port", strconv.Itoa(HealthzPort),
	}
	args = append(args, c.opts.FlanneldArgs...)
	return append(args, c.opts.NodeArgs[n.Name]...)
}

// RemoveFlanneldState removes what a stopped flanneld leaves on the node:
// its devices (flannel.<VNI>, flannel0, ..., and with them their routes)
// and its iptables chains FLANNEL-* with the jumps to them, as the
// migration guide's per-node steps do. Routes flanneld's host-gw added via
// the underlay stay (overlayd replaces them in place).
func RemoveFlanneldState(ctx context.Context, n *lab.Node) error {
	nl, err := n.Netlink()
	if err != nil {
		return err
	}
	defer nl.Close()
	links, err := nl.LinkList()
	if err != nil {
		return fmt.Errorf("%s: listing links: %w", n.Name, err)
	}
	for _, l := range links {
		if name := l.Attrs().Name; strings.HasPrefix(name, "flannel") {
			if err := nl.LinkDel(l); err != nil {
				return fmt.Errorf("%s: deleting %s: %w", n.Name, name, err)
			}
		}
	}
	for _, table := range []string{"nat", "filter"} {
		rules, err := n.Exec(ctx, "iptables", "-w", "-t", table, "-S")
		if err != nil {
			return err
		}
		var jumps, chains []string
		for _, line := range strings.Split(rules, "\n") {
			f := strings.Fields(line)
			switch {
			case len(f) >= 2 && f[0] == "-N" && strings.HasPrefix(f[1], "FLANNEL-"):
				chains = append(chains, f[1])
			case len(f) >= 2 && f[0] == "-A" && !strings.HasPrefix(f[1], "FLANNEL-") && strings.Contains(line, "-j FLANNEL-"):
				jumps = append(jumps, "-D"+strings.TrimPrefix(line, "-A"))
			}
		}
		if len(chains) == 0 && len(jumps) == 0 {
			continue
		}
		// iptables-restore parses the quoted comments of -S output.
		var b strings.Builder
		fmt.Fprintf(&b, "*%s\n", table)
		for _, j := range jumps {
			fmt.Fprintln(&b, j)
		}
		for _, ch := range chains {
			fmt.Fprintf(&b, "-F %s\n", ch)
		}
		for _, ch := range chains {
			fmt.Fprintf(&b, "-X %s\n", ch)
		}
		b.WriteString("COMMIT\n")
		cmd := n.Command(ctx, "iptables-restore", "-w", "--noflush")
		cmd.Stdin = strings.NewReader(b.String())
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: removing flanneld's %s chains: %w: %s\n%s", n.Name, table, err, out, b.String())
		}
	}
	return nil
}

// sbinPath is PATH with the sbin directories, where iptables is.
func sbinPath() string {
	path := os.Getenv("PATH")
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		if !strings.Contains(":"+path+":", ":"+d+":") {
			path += ":" + d
		}
	}
	return strings.TrimPrefix(path, ":")
}
