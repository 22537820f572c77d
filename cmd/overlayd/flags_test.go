package main

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/overlayd/overlayd/test/cluster"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestDefaults(t *testing.T) {
	o, err := parseOptions(nil, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if !o.kubeSubnetMgr || !o.iptablesForwardRules || o.ipMasq || o.iptablesResync != 5 ||
		o.subnetFile != "/run/flannel/subnet.env" || o.kubeAnnotationPrefix != "overlayd.io" || o.healthzPort != 0 ||
		o.resyncPeriod != 30*time.Second || o.logFormat != "console" || o.leaseNamespace != "kube-system" {
		t.Fatalf("defaults %+v", o)
	}
}

func TestFlagsEnvAndPrecedence(t *testing.T) {
	e := env(map[string]string{
		"OVERLAYD_IP_MASQ":                "true",
		"OVERLAYD_IFACE":                  "eth1, 198.18.0.5",
		"OVERLAYD_IPTABLES_RESYNC":        "7",
		"FLANNELD_PUBLIC_IP":              "203.0.113.9",
		"OVERLAYD_KUBE_ANNOTATION_PREFIX": "from-env.example.com",
		"FLANNELD_KUBE_ANNOTATION_PREFIX": "flannel.alpha.coreos.com",
	})
	// flanneld's single-dash form works too.
	o, err := parseOptions([]string{"-iptables-resync=9", "--iface-regex", "^en", "--iface-regex", "^eth"}, e, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if !o.ipMasq {
		t.Error("OVERLAYD_IP_MASQ not applied")
	}
	if strings.Join(o.ifaces, "|") != "eth1|198.18.0.5" {
		t.Errorf("iface from env: %q", o.ifaces)
	}
	if o.iptablesResync != 9 {
		t.Errorf("flag did not win over env: %d", o.iptablesResync)
	}
	if o.publicIP != "203.0.113.9" {
		t.Errorf("FLANNELD_PUBLIC_IP not read: %q", o.publicIP)
	}
	if o.kubeAnnotationPrefix != "from-env.example.com" {
		t.Errorf("OVERLAYD_ must win over FLANNELD_: %q", o.kubeAnnotationPrefix)
	}
	if strings.Join(o.ifaceRegex, "|") != "^en|^eth" {
		t.Errorf("repeated flag: %q", o.ifaceRegex)
	}
}

func TestBadValuesAreOneLineErrors(t *testing.T) {
	tests := []struct {
		args []string
		env  map[string]string
		has  string
	}{
		{[]string{"--iptables-resync=abc"}, nil, "iptables-resync"},
		{[]string{"--iptables-resync=0"}, nil, "--iptables-resync 0: must be a positive number of seconds"},
		{nil, map[string]string{"OVERLAYD_IPTABLES_RESYNC": "soon"}, `invalid value "soon" for OVERLAYD_IPTABLES_RESYNC`},
		{nil, map[string]string{"OVERLAYD_IP_MASQ": "maybe"}, "OVERLAYD_IP_MASQ"},
		{[]string{"--kube-subnet-mgr=false"}, nil, "no etcd mode"},
		{[]string{"--etcd-endpoints=http://127.0.0.1:2379"}, nil, "--etcd-endpoints: overlayd takes leases only from the Kubernetes API"},
		{nil, map[string]string{"FLANNELD_ETCD_PREFIX": "/coreos.com/network"}, "--etcd-prefix: overlayd takes leases only from the Kubernetes API"},
		{[]string{"--subnet-lease-renew-margin=0"}, nil, "--subnet-lease-renew-margin 0: must be between 1 and 1439 minutes"},
		{[]string{"--subnet-lease-renew-margin=1440"}, nil, "--subnet-lease-renew-margin 1440"},
		{[]string{"--subnet-lease-renew-margin=1h"}, nil, "want a whole number of minutes"},
		{[]string{"-v=-1"}, nil, "-v -1: must be 0 or more"},
		{[]string{"-v=loud"}, nil, "-v"},
		{[]string{"--healthz-port=70000"}, nil, "--healthz-port 70000"},
		{[]string{"--profiling"}, nil, "--profiling: the profiles are served on the healthz server; set --healthz-port"},
		{[]string{"--healthz-ip=localhost"}, nil, `--healthz-ip "localhost" is not an IP address`},
		{[]string{"--public-ip=10.0.0"}, nil, `--public-ip "10.0.0" is not an IPv4 address`},
		{[]string{"--public-ipv6=10.0.0.1"}, nil, "--public-ipv6"},
		{[]string{"--iface-regex=eth("}, nil, `--iface-regex "eth("`},
		{[]string{"--iface-can-reach=gw"}, nil, `--iface-can-reach "gw"`},
		{[]string{"--kube-annotation-prefix=Not_Valid"}, nil, "--kube-annotation-prefix"},
		{[]string{"--lease-namespace=Kube_System"}, nil, "--lease-namespace"},
		{[]string{"--log-level=loud"}, nil, `--log-level "loud"`},
		{[]string{"--log-format=xml"}, nil, `--log-format "xml"`},
		{[]string{"--metrics-addr=9100"}, nil, "--metrics-addr"},
		{[]string{"--no-such-flag"}, nil, "no-such-flag"},
		{[]string{"extra"}, nil, `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		_, err := parseOptions(tt.args, env(tt.env), &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tt.has) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v %v: err = %v, want one line containing %q", tt.args, tt.env, err, tt.has)
		}
	}
}

// contractFlags are flanneld's flags (v0.28.10's main.go, klog's three it
// copies included) and overlayd's own that users and tooling rely on.
var contractFlags = []string{
	"kube-subnet-mgr", "kubeconfig-file", "kube-api-url", "net-config-path", "subnet-file",
	"iface", "iface-regex", "iface-can-reach", "public-ip", "public-ipv6", "ip-masq",
	"ip-masq-fully-random-disable", "ip-blackhole-route", "iptables-forward-rules",
	"iptables-resync", "kube-annotation-prefix", "healthz-ip", "healthz-port", "version",
	"subnet-lease-renew-margin", "set-node-network-unavailable",
	"etcd-endpoints", "etcd-prefix", "etcd-keyfile", "etcd-certfile", "etcd-cafile", "etcd-username", "etcd-password",
	"v", "vmodule", "log_backtrace_at",
	"log-level", "log-format",
}

// flanneld's flags without an overlayd flag of their own mean what they
// mean in flanneld, from the command line and from FLANNELD_*.
func TestFlanneldOnlyFlags(t *testing.T) {
	o, err := parseOptions([]string{"-v", "2", "--ip-blackhole-route", "--ip-masq-fully-random-disable", "--subnet-lease-renew-margin", "90",
		"-vmodule", "reflector=4", "-log_backtrace_at", "reflector.go:10"}, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if o.klog.Verbosity != 2 || !o.klog.SetsLevel || o.klog.VModule != "reflector=4" || o.klog.BacktraceAt != "reflector.go:10" {
		t.Errorf("klog flags %+v", o.klog)
	}
	if !o.blackholeRoute || !o.masqRandomFullyOff || o.leaseRenewMargin != 90*time.Minute {
		t.Errorf("blackhole %v, random-fully off %v, renew margin %s", o.blackholeRoute, o.masqRandomFullyOff, o.leaseRenewMargin)
	}
	o, err = parseOptions(nil, env(map[string]string{"FLANNELD_V": "3", "FLANNELD_IP_BLACKHOLE_ROUTE": "true", "FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "30"}), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if o.klog.Verbosity != 3 || !o.klog.SetsLevel || !o.blackholeRoute || o.leaseRenewMargin != 30*time.Minute {
		t.Errorf("from FLANNELD_*: %+v", o)
	}
	// --log-level wins over -v.
	o, err = parseOptions([]string{"-v=4", "--log-level=warn"}, env(nil), &bytes.Buffer{})
	if err != nil || o.klog.SetsLevel {
		t.Errorf("-v with --log-level: %v, sets level %v", err, o.klog.SetsLevel)
	}
	// Defaults are flanneld's.
	o, _ = parseOptions(nil, env(nil), &bytes.Buffer{})
	if o.blackholeRoute || o.masqRandomFullyOff || o.leaseRenewMargin != 60*time.Minute || o.klog.SetsLevel {
		t.Errorf("defaults %+v", o)
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	_, err := parseOptions([]string{"--help"}, env(nil), &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err = %v", err)
	}
	for _, f := range contractFlags {
		if !strings.Contains(out.String(), "  -"+f) {
			t.Errorf("--help does not list --%s", f)
		}
	}
	if !strings.Contains(out.String(), "OVERLAYD_<FLAG_NAME>") {
		t.Error("--help does not explain the environment variables")
	}
}

// TestBinary runs the built program as a user would.
func TestBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "overlayd")
	build := exec.Command("go", "build", "-ldflags", "-X github.com/overlayd/overlayd/pkg/version.Version=v9.8.7-test", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}

	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil || string(out) != "v9.8.7-test\n" {
		t.Fatalf("--version: %q %v", out, err)
	}

	out, err = exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("--help exited with %v", err)
	}
	for _, f := range contractFlags {
		if !strings.Contains(string(out), "-"+f) {
			t.Errorf("--help does not list --%s", f)
		}
	}

	cmd := exec.Command(bin, "--iptables-resync=never")
	out, err = cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Fatalf("bad flag: err = %v, want exit status 2", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "overlayd: ") || !strings.Contains(lines[0], "iptables-resync") {
		t.Fatalf("bad flag output is not one line naming the flag:\n%s", out)
	}

	// A missing net-conf.json is a clear error, not a crash.
	cmd = exec.Command(bin, "--net-config-path", filepath.Join(t.TempDir(), "missing.json"))
	cmd.Env = append(os.Environ(), "NODE_NAME=n1")
	out, _ = cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), "reading --net-config-path") {
		t.Fatalf("missing net-conf: exit %d\n%s", cmd.ProcessState.ExitCode(), out)
	}
}

// In a DaemonSet the Leases live in the agent's namespace: POD_NAMESPACE
// (from the downward API) wins over --lease-namespace.
func TestPodNamespaceIsTheLeaseNamespace(t *testing.T) {
	o, err := parseOptions([]string{"--lease-namespace", "leases"}, env(nil), &bytes.Buffer{})
	if err != nil || o.leaseNamespace != "leases" {
		t.Fatalf("flag: %v %+v", err, o)
	}
	o, err = parseOptions([]string{"--lease-namespace", "leases"}, env(map[string]string{"POD_NAMESPACE": "kube-flannel"}), &bytes.Buffer{})
	if err != nil || o.leaseNamespace != "kube-flannel" {
		t.Fatalf("POD_NAMESPACE: %v, lease namespace %q", err, o.leaseNamespace)
	}
	if _, err := parseOptions(nil, env(map[string]string{"POD_NAMESPACE": "Not_A_Namespace"}), &bytes.Buffer{}); err == nil {
		t.Fatal("invalid POD_NAMESPACE accepted")
	}
}

// TestEveryFlanneldFlag: every flag the real flanneld (hack/tools/flannel)
// lists in its -h is one of overlayd's (meaning what it means there, or
// refused naming why: the tests above).
func TestEveryFlanneldFlag(t *testing.T) {
	bin, err := cluster.FlanneldBinary()
	if err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command(bin, "-h").CombinedOutput() // flanneld's usage exits 0 or 2 by version
	var theirs []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(line, "  -") {
			theirs = append(theirs, strings.TrimPrefix(f[0], "-"))
		}
	}
	if len(theirs) < 30 {
		t.Fatalf("read %d flags from flanneld -h; its usage:\n%s", len(theirs), out)
	}
	fs := newFlagSet(&options{}, &bytes.Buffer{})
	for _, name := range theirs {
		if fs.Lookup(name) == nil {
			t.Errorf("flanneld's -%s is not an overlayd flag", name)
		}
	}
}
