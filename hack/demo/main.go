// Command demo is `make demo`: a local overlayd cluster without containers.
// It starts a real etcd, kube-apiserver and kube-controller-manager on
// loopback, builds nodes and pods as network namespaces, runs the real
// overlayd binary on every node, attaches the pods with the real CNI plugins
// (loopback, and flannel delegating to bridge and host-local, reading the
// subnet.env overlayd writes), prints the leases and a pod-to-pod
// connectivity matrix, and removes everything when it exits.
//
// -family chooses the pods' address families: ipv4 (the default), dual
// (dual-stack: every node has an IPv4 and an IPv6 subnet, every pod both
// addresses, and a matrix is checked for each family) or ipv6 (IPv6-only).
//
// It only creates namespaces named ovldemo-<id>-*, uses underlay addresses in
// 198.18.0.0/15 and fd00::/8 inside them, and never changes the host's own
// interfaces, routes or iptables.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/test/lab"
)

// Prefix starts the name of every network namespace the demo creates.
const Prefix = "ovldemo"

// Backends are the values BACKEND may take.
var Backends = []string{"vxlan", "host-gw", "udp"}

// Families are the values FAMILY may take: IPv4 only, dual-stack, IPv6 only.
var Families = []string{"ipv4", "dual", "ipv6"}

// options are the demo's flags.
type options struct {
	backend  string
	family   string // one of Families
	overlayd string
	nodes    int
	pods     int
	hold     string // DEMO_HOLD: "" (hold if stdin is a terminal), "0" or "1"
}

func main() {
	opts, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(2)
	}
	os.Exit(run(opts, os.Stdout))
}

func parseFlags(args []string, errOut io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(errOut)
	fs.StringVar(&o.backend, "backend", envOr("BACKEND", "vxlan"), "overlay backend: "+strings.Join(Backends, ", ")+" (env BACKEND)")
	fs.StringVar(&o.family, "family", envOr("FAMILY", "ipv4"), "address families: ipv4, dual (dual-stack) or ipv6 (IPv6-only) (env FAMILY)")
	fs.StringVar(&o.overlayd, "overlayd", "bin/overlayd", "the overlayd binary to run on every node (`make build`)")
	fs.IntVar(&o.nodes, "nodes", 3, "number of nodes (1 to 20)")
	fs.IntVar(&o.pods, "pods", 2, "pods per node (1 to 10)")
	fs.StringVar(&o.hold, "hold", os.Getenv("DEMO_HOLD"), "keep the cluster up until Enter or Ctrl-C: 1 yes, 0 no, empty: only when stdin is a terminal (env DEMO_HOLD)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if !slices.Contains(Backends, o.backend) {
		return o, fmt.Errorf("unknown BACKEND %q: want one of %s (e.g. make demo BACKEND=udp)", o.backend, strings.Join(Backends, ", "))
	}
	if !slices.Contains(Families, o.family) {
		return o, fmt.Errorf("unknown FAMILY %q: want one of %s (e.g. make demo FAMILY=dual)", o.family, strings.Join(Families, ", "))
	}
	if o.backend == "udp" && o.family != "ipv4" {
		return o, fmt.Errorf("FAMILY=%s: the udp backend carries IPv4 only; use BACKEND=vxlan or BACKEND=host-gw with FAMILY=%s", o.family, o.family)
	}
	if o.nodes < 1 || o.nodes > 20 {
		return o, fmt.Errorf("-nodes %d: want 1 to 20", o.nodes)
	}
	if o.pods < 1 || o.pods > 10 {
		return o, fmt.Errorf("-pods %d: want 1 to 10", o.pods)
	}
	if o.hold != "" && o.hold != "0" && o.hold != "1" {
		return o, fmt.Errorf("DEMO_HOLD %q: want 1, 0 or empty", o.hold)
	}
	return o, nil
}

// v4 and v6 report whether the demo's cluster has IPv4 and IPv6.
func (o options) v4() bool { return o.family != "ipv6" }
func (o options) v6() bool { return o.family != "ipv4" }

// families lists the families the pods have, IPv4 first, as the v6
// argument of lab.CheckMatrixFamily.
func (o options) families() []bool {
	var out []bool
	if o.v4() {
		out = append(out, false)
	}
	if o.v6() {
		out = append(out, true)
	}
	return out
}

func familyName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// run brings the cluster up, shows it, and tears it down on every way out:
// success, failure, SIGINT/SIGTERM and panic. It returns the exit status.
func run(opts options, out io.Writer) (code int) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(out, "demo: needs root (it creates network namespaces); run it as root, e.g. sudo make demo")
		return 1
	}
	bin, err := filepath.Abs(opts.overlayd)
	if err == nil {
		_, err = os.Stat(bin)
	}
	if err != nil {
		fmt.Fprintf(out, "demo: overlayd binary: %v (run `make build`, or pass -overlayd)\n", err)
		return 1
	}

	// Until teardown has finished, signals only cancel ctx: a second Ctrl-C
	// must not cut the cleanup short.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	d := &demo{opts: opts, overlayd: bin, out: out}
	defer func() {
		if !d.teardown() && code == 0 {
			code = 1
		}
	}()

	fmt.Fprintf(out, "overlayd demo: backend %s, %s, %d nodes x %d pods, every node and pod a network namespace\n\n",
		opts.backend, map[string]string{"ipv4": "IPv4", "dual": "dual-stack (IPv4 and IPv6)", "ipv6": "IPv6-only"}[opts.family],
		opts.nodes, opts.pods)
	if err := d.up(ctx); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintf(out, "\n%v: stopping\n", context.Cause(ctx))
			return 1
		}
		fmt.Fprintf(out, "\ndemo failed: %v\n", err)
		d.printLogTails()
		return 1
	}
	d.printLeases(ctx)
	// One matrix per family, IPv4 first.
	var matrices []*lab.Matrix
	for _, v6 := range opts.families() {
		m := d.checkMatrix(ctx, v6)
		matrices = append(matrices, m)
		icmp := "ICMP"
		if v6 {
			icmp = "ICMPv6"
		}
		fmt.Fprintf(out, "\nConnectivity over %s (a row pings each column, %s echo between pod namespaces):\n%s",
			familyName(v6), icmp, indent(m.String(), "  "))
	}
	pairs := len(d.c.Pods) * (len(d.c.Pods) - 1)
	failed := false
	for _, m := range matrices {
		if m.OK() {
			continue
		}
		if ctx.Err() != nil {
			fmt.Fprintf(out, "\n%v: stopping\n", context.Cause(ctx))
			return 1
		}
		failed = true
		fmt.Fprintf(out, "\nFAIL: %d of %d pod pairs cannot reach each other over %s:\n", len(m.Failed()), pairs, familyName(m.IPv6))
		for _, p := range m.Failed() {
			fmt.Fprintf(out, "  %s\n", p)
		}
	}
	if failed {
		d.printLogTails()
		return 1
	}
	var over []string
	for _, m := range matrices {
		over = append(over, "over "+familyName(m.IPv6))
	}
	fmt.Fprintf(out, "\nOK: all %d pod pairs reach each other %s across %d nodes (backend %s).\n",
		pairs, strings.Join(over, " and "), opts.nodes, opts.backend)

	hold := opts.hold == "1" || (opts.hold == "" && isTerminal(os.Stdin))
	d.printExplore(hold)
	if hold {
		fmt.Fprint(out, "\nThe cluster is up. Press Enter or Ctrl-C to tear it down. ")
		waitForEnter(ctx, os.Stdin)
		if ctx.Err() != nil {
			fmt.Fprintf(out, "\n%v", context.Cause(ctx))
		}
	}
	return 0
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// waitForEnter returns when a line (or EOF) is read from in, or ctx ends.
func waitForEnter(ctx context.Context, in io.Reader) {
	read := make(chan struct{})
	go func() {
		buf := make([]byte, 1)
		for {
			n, err := in.Read(buf)
			if err != nil || (n == 1 && buf[0] == '\n') {
				close(read)
				return
			}
		}
	}()
	select {
	case <-read:
	case <-ctx.Done():
	}
}

func indent(s, prefix string) string {
	lines := strings.SplitAfter(s, "\n")
	var b strings.Builder
	for _, l := range lines {
		if l != "" {
			b.WriteString(prefix + l)
		}
	}
	return b.String()
}

// since formats the time a step took.
func since(start time.Time) string {
	return fmt.Sprintf("%.1fs", time.Since(start).Seconds())
}
