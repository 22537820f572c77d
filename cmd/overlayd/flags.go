package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/pkg/logging"
	"github.com/overlayd/overlayd/subnet/kube"
)

// options are overlayd's command-line settings. Names and meanings follow
// flanneld's flags where flanneld has the option.
type options struct {
	kubeSubnetMgr        bool
	kubeconfigFile       string
	kubeAPIURL           string
	netConfigPath        string
	subnetFile           string
	wireguardKeyFile     string
	ifaces               stringList
	ifaceRegex           stringList
	ifaceCanReach        string
	publicIP             string
	publicIPv6           string
	ipMasq               bool
	iptablesForwardRules bool
	iptablesResync       int
	kubeAnnotationPrefix string
	leaseNamespace       string
	setNodeNetUnavail    bool
	healthzIP            string
	healthzPort          int
	metricsAddr          string
	profiling            bool
	resyncPeriod         time.Duration
	logLevel             string
	logFormat            string
	version              bool
	uninstall            bool
	ingressFilter        bool

	// flanneld's flags with no overlayd flag of their own.
	blackholeRoute     bool          // --ip-blackhole-route
	masqRandomFullyOff bool          // --ip-masq-fully-random-disable
	leaseRenewMargin   time.Duration // --subnet-lease-renew-margin, in minutes
	klog               logging.Klog  // klog's -v, -vmodule, -log_backtrace_at
	etcdGiven          string        // an --etcd-* flag given; refused
}

// etcdFlags are flanneld's etcd lease store flags. overlayd has no etcd
// lease store: they are refused, naming the reason.
var etcdFlags = []string{"etcd-endpoints", "etcd-prefix", "etcd-keyfile", "etcd-certfile", "etcd-cafile", "etcd-username", "etcd-password"}

// stringList is a repeatable flag (--iface a --iface b); from the
// environment it takes a comma-separated list.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error {
	*s = append(*s, v)
	return nil
}

// envPrefixes are tried in order: OVERLAYD_ is ours, FLANNELD_ lets a
// flanneld DaemonSet's environment keep working.
var envPrefixes = []string{"OVERLAYD_", "FLANNELD_"}

func newFlagSet(o *options, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("overlayd", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.BoolVar(&o.kubeSubnetMgr, "kube-subnet-mgr", true, "take subnet leases from the Kubernetes API (the only lease store overlayd has)")
	fs.StringVar(&o.kubeconfigFile, "kubeconfig-file", "", "kubeconfig file; empty means in-cluster configuration")
	fs.StringVar(&o.kubeAPIURL, "kube-api-url", "", "Kubernetes API server URL, overriding the kubeconfig's")
	fs.StringVar(&o.netConfigPath, "net-config-path", "/etc/kube-overlayd/net-conf.json", "path to net-conf.json; reloaded when it changes")
	fs.StringVar(&o.subnetFile, "subnet-file", "/run/flannel/subnet.env", "file the CNI flannel plugin reads the node's subnet from")
	fs.StringVar(&o.wireguardKeyFile, "wireguard-key-file", "", "the wireguard backend's private key file, created (mode 0400) when missing; empty means WIREGUARD_KEY_FILE, else /run/flannel/wgkey (flanneld's)")
	fs.Var(&o.ifaces, "iface", "interface (name or address) for traffic between nodes; repeat to try several in order")
	fs.Var(&o.ifaceRegex, "iface-regex", "regular expression matched against interface addresses, then names; repeat to try several in order")
	fs.StringVar(&o.ifaceCanReach, "iface-can-reach", "", "use the interface the kernel routes this address through")
	fs.StringVar(&o.publicIP, "public-ip", "", "IPv4 address peers send to (default: the interface's address)")
	fs.StringVar(&o.publicIPv6, "public-ipv6", "", "IPv6 address peers send to (default: the interface's address)")
	fs.BoolVar(&o.ipMasq, "ip-masq", false, "masquerade traffic from pods to destinations outside the cluster network")
	fs.BoolVar(&o.iptablesForwardRules, "iptables-forward-rules", true, "accept traffic to and from the pod network in FORWARD")
	fs.IntVar(&o.iptablesResync, "iptables-resync", 5, "seconds between checks that the iptables rules are in place")
	fs.StringVar(&o.kubeAnnotationPrefix, "kube-annotation-prefix", kube.DefaultAnnotationPrefix, "prefix of the Node annotations overlayd publishes; flannel.alpha.coreos.com interoperates with flanneld")
	fs.StringVar(&o.leaseNamespace, "lease-namespace", kube.DefaultLeaseNamespace, "namespace of the Lease objects in LeaseMode \"lease\" (POD_NAMESPACE wins when set)")
	fs.BoolVar(&o.setNodeNetUnavail, "set-node-network-unavailable", true, "set the Node condition NetworkUnavailable to False once the network is ready")
	fs.StringVar(&o.healthzIP, "healthz-ip", "0.0.0.0", "address of the /healthz, /readyz and /metrics server")
	fs.IntVar(&o.healthzPort, "healthz-port", 0, "port of the /healthz, /readyz and /metrics server; 0 disables it")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "", "extra address (host:port) serving only /metrics; /metrics is always on the healthz server too")
	fs.BoolVar(&o.profiling, "profiling", false, "serve Go's runtime profiles (heap, CPU) under /debug/pprof/ on the healthz server")
	fs.DurationVar(&o.resyncPeriod, "resync-period", 30*time.Second, "how often the kernel state is compared with the desired state even without events")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: "+strings.Join(logging.Levels, ", "))
	fs.StringVar(&o.logFormat, "log-format", "console", "log format: "+strings.Join(logging.Formats, ", "))
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.BoolVar(&o.ingressFilter, "ingress-filter", true, "accept encapsulated traffic (the tunnels' UDP ports) only from the public addresses peers publish; anyone else on the underlay could otherwise send into the pod network")
	fs.BoolVar(&o.uninstall, "uninstall", false, "remove every device, route and iptables rule of overlayd's from this node, then exit (rolling a node back to flanneld, removing overlayd)")

	fs.BoolVar(&o.blackholeRoute, "ip-blackhole-route", false, "add a blackhole route for this node's pod subnet (each family), so traffic to its unused addresses is dropped rather than sent to the default gateway (e.g. with Canal, where pods have host routes and no bridge)")
	fs.BoolVar(&o.masqRandomFullyOff, "ip-masq-fully-random-disable", false, "masquerade without --random-fully")
	fs.Var(minutes{&o.leaseRenewMargin}, "subnet-lease-renew-margin", "LeaseMode \"lease\": renew the Lease this many minutes before it expires (1 to 1439, default 60)")
	fs.IntVar(&o.klog.Verbosity, "v", 0, "log verbosity, as flanneld's (klog's) -v: 1 and above log overlayd's debug lines and client-go's up to that verbosity; --log-level wins when both are given")
	fs.StringVar(&o.klog.VModule, "vmodule", "", "klog's per-file verbosity of client-go's log lines (pattern=N,...)")
	fs.StringVar(&o.klog.BacktraceAt, "log_backtrace_at", "", "klog's: a stack trace when client-go logs at file:line")
	for _, name := range etcdFlags {
		fs.Func(name, "refused: overlayd takes leases only from the Kubernetes API (flanneld's etcd lease store)", func(string) error {
			o.etcdGiven = name
			return nil
		})
	}
	return fs
}

// minutes is a flag value in whole minutes, as flanneld's
// --subnet-lease-renew-margin.
type minutes struct{ d *time.Duration }

func (m minutes) String() string {
	if m.d == nil {
		return ""
	}
	return fmt.Sprint(int(m.d.Minutes()))
}

func (m minutes) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return errors.New("want a whole number of minutes")
	}
	*m.d = time.Duration(n) * time.Minute
	return nil
}

// envName is the environment variable for a flag: OVERLAYD_IP_MASQ for --ip-masq.
func envName(prefix, flagName string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseOptions reads flags, then fills every flag not given on the command
// line from the environment, then validates. Errors are one line.
func parseOptions(args []string, getenv func(string) string, out io.Writer) (*options, error) {
	o := &options{leaseRenewMargin: kube.DefaultRenewMargin}
	// The flag package prints errors and usage itself; keep that for
	// --help only, so a bad value is reported in one line by the caller.
	var printed bytes.Buffer
	fs := newFlagSet(o, &printed)
	fs.Usage = func() {
		fmt.Fprintf(&printed, "Usage: overlayd [flags]\n\nEvery flag can also be set as OVERLAYD_<FLAG_NAME> (e.g. OVERLAYD_IP_MASQ=true);\nFLANNELD_<FLAG_NAME> is read too. Command-line flags win.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			out.Write(printed.Bytes())
		}
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: overlayd takes only flags", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || envErr != nil {
			return
		}
		for _, prefix := range envPrefixes {
			name := envName(prefix, f.Name)
			v := getenv(name)
			if v == "" {
				continue
			}
			values := []string{v}
			if _, isList := f.Value.(*stringList); isList {
				values = strings.Split(v, ",")
			}
			for _, one := range values {
				if err := f.Value.Set(strings.TrimSpace(one)); err != nil {
					envErr = fmt.Errorf("invalid value %q for %s: %v", v, name, err)
					return
				}
			}
			given[f.Name] = true
			return
		}
	})
	if envErr != nil {
		return nil, envErr
	}
	// flanneld's -v is its log level; an explicit --log-level wins.
	o.klog.SetsLevel = given["v"] && !given["log-level"]
	// In a DaemonSet the Leases live in the agent's own namespace.
	if ns := getenv("POD_NAMESPACE"); ns != "" {
		o.leaseNamespace = ns
	}
	if o.version {
		return o, nil
	}
	return o, o.validate()
}

func (o *options) validate() error {
	if !o.kubeSubnetMgr {
		return errors.New("--kube-subnet-mgr=false: overlayd takes leases only from the Kubernetes API (there is no etcd mode)")
	}
	if o.etcdGiven != "" {
		return fmt.Errorf("--%s: overlayd takes leases only from the Kubernetes API; it has no etcd lease store (remove the --etcd-* flags)", o.etcdGiven)
	}
	if o.leaseRenewMargin < time.Minute || o.leaseRenewMargin >= 24*time.Hour {
		return fmt.Errorf("--subnet-lease-renew-margin %d: must be between 1 and 1439 minutes", int(o.leaseRenewMargin.Minutes()))
	}
	if o.klog.Verbosity < 0 {
		return fmt.Errorf("-v %d: must be 0 or more", o.klog.Verbosity)
	}
	if o.iptablesResync <= 0 {
		return fmt.Errorf("--iptables-resync %d: must be a positive number of seconds", o.iptablesResync)
	}
	if o.resyncPeriod <= 0 {
		return fmt.Errorf("--resync-period %s: must be positive", o.resyncPeriod)
	}
	if o.healthzPort < 0 || o.healthzPort > 65535 {
		return fmt.Errorf("--healthz-port %d: must be between 0 and 65535", o.healthzPort)
	}
	if _, err := netip.ParseAddr(o.healthzIP); err != nil {
		return fmt.Errorf("--healthz-ip %q is not an IP address", o.healthzIP)
	}
	if err := kube.CheckAnnotationPrefix(o.kubeAnnotationPrefix); err != nil {
		return fmt.Errorf("--kube-annotation-prefix: %w", err)
	}
	if errs := validation.IsDNS1123Label(o.leaseNamespace); len(errs) > 0 {
		return fmt.Errorf("--lease-namespace %q is not a valid namespace: %s", o.leaseNamespace, errs[0])
	}
	if o.profiling && o.healthzPort == 0 {
		return errors.New("--profiling: the profiles are served on the healthz server; set --healthz-port")
	}
	if o.metricsAddr != "" {
		if _, _, err := net.SplitHostPort(o.metricsAddr); err != nil {
			return fmt.Errorf("--metrics-addr %q: want host:port", o.metricsAddr)
		}
	}
	if o.netConfigPath == "" {
		return errors.New("--net-config-path must not be empty")
	}
	if o.subnetFile == "" {
		return errors.New("--subnet-file must not be empty")
	}
	if _, err := logging.Check(o.logLevel, o.logFormat); err != nil {
		return err
	}
	return o.selectOptions(true, true).Validate()
}

// selectOptions are the flags choosing the external interface.
func (o *options) selectOptions(v4, v6 bool) ip.SelectOptions {
	return ip.SelectOptions{
		Ifaces:        o.ifaces,
		IfaceRegex:    o.ifaceRegex,
		IfaceCanReach: o.ifaceCanReach,
		PublicIP:      o.publicIP,
		PublicIPv6:    o.publicIPv6,
		IPv4:          v4,
		IPv6:          v6,
	}
}

// defaultGetenv is os.Getenv; a variable for tests.
var defaultGetenv = os.Getenv
