package manifests

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// defaultRE finds a default in the flag package's usage text.
var defaultRE = regexp.MustCompile(`\(default "?([^")]*)"?\)$`)

// flagDefaults are the defaults the real binary reports in --help.
func flagDefaults(t *testing.T) map[string]string {
	t.Helper()
	out, err := exec.Command(overlaydBin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("overlayd --help: %v\n%s", err, out)
	}
	defaults := map[string]string{}
	name := ""
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, "  -"); ok {
			name = strings.Fields(rest)[0]
		}
		if m := defaultRE.FindStringSubmatch(line); m != nil && name != "" {
			defaults[name] = m[1]
		}
	}
	for _, f := range []string{"net-config-path", "subnet-file"} {
		if defaults[f] == "" {
			t.Fatalf("no default for --%s in overlayd --help:\n%s", f, out)
		}
	}
	return defaults
}

// flagValue is the value of --name=value or --name value in args.
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
		if a == "--"+name && i+1 < len(args) && !strings.HasPrefix(args[i+1], "--") {
			return args[i+1], true
		}
		if a == "--"+name {
			return "true", true
		}
	}
	return "", false
}

func mountAt(c *corev1.Container, dir string) *corev1.VolumeMount {
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].MountPath == dir {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

func volume(spec *corev1.PodSpec, name string) *corev1.Volume {
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == name {
			return &spec.Volumes[i]
		}
	}
	return nil
}

// hostPathAt checks that c sees the node's directory hostDir at dir.
func hostPathAt(t *testing.T, spec *corev1.PodSpec, c *corev1.Container, dir, hostDir string) {
	t.Helper()
	m := mountAt(c, dir)
	if m == nil {
		t.Errorf("container %s mounts nothing at %s", c.Name, dir)
		return
	}
	v := volume(spec, m.Name)
	if v == nil || v.HostPath == nil || v.HostPath.Path != hostDir || m.SubPath != "" {
		t.Errorf("container %s: %s is not the node's %s", c.Name, dir, hostDir)
	}
}

// TestDaemonSet checks that the DaemonSet's parts fit each other and the
// binary: the probes ask the address overlayd serves, the configuration is
// mounted where overlayd reads it (as a directory, so that changes arrive),
// subnet.env is written where the CNI plugin on the node reads it, and the
// node's identity comes from the downward API.
func TestDaemonSet(t *testing.T) {
	objs := overlaydObjects(t)
	ds := daemonSet(t, objs, "overlayd")
	spec := &ds.Spec.Template.Spec
	c := container(t, spec, "overlayd", false)
	defaults := flagDefaults(t)

	if !spec.HostNetwork {
		t.Error("not hostNetwork: overlayd programs the node's own network")
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", spec.PriorityClassName)
	}
	if !slices.ContainsFunc(spec.Tolerations, func(tol corev1.Toleration) bool {
		return tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == ""
	}) {
		t.Errorf("tolerations %s do not tolerate every taint", yamlString(spec.Tolerations))
	}
	if u := ds.Spec.UpdateStrategy; u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate == nil ||
		u.RollingUpdate.MaxUnavailable == nil || u.RollingUpdate.MaxUnavailable.String() != "0" ||
		u.RollingUpdate.MaxSurge == nil || u.RollingUpdate.MaxSurge.String() != "1" {
		t.Errorf("update strategy %s, want RollingUpdate with maxSurge 1 and maxUnavailable 0", yamlString(u))
	}
	// With hostNetwork a declared port is a host port: the surge pod of an
	// update could not be scheduled beside the running one.
	for _, ct := range spec.Containers {
		if len(ct.Ports) > 0 {
			t.Errorf("container %s declares ports %s; a surge pod could not be scheduled beside it", ct.Name, yamlString(ct.Ports))
		}
	}
	if sc := c.SecurityContext; sc == nil || sc.Capabilities == nil ||
		!slices.Contains(sc.Capabilities.Add, "NET_ADMIN") || !slices.Contains(sc.Capabilities.Add, "NET_RAW") ||
		!slices.Contains(sc.Capabilities.Add, "BPF") {
		t.Errorf("security context %s, want NET_ADMIN, NET_RAW and BPF (the udp handover's steering program) added", yamlString(sc))
	}

	for _, f := range []string{"kube-subnet-mgr", "ip-masq"} {
		if v, ok := flagValue(c.Args, f); !ok || v != "true" {
			t.Errorf("--%s not given: args %v", f, c.Args)
		}
	}
	healthIP, ok1 := flagValue(c.Args, "healthz-ip")
	healthPort, ok2 := flagValue(c.Args, "healthz-port")
	if !ok1 || !ok2 {
		t.Fatalf("--healthz-ip and --healthz-port must be given: args %v", c.Args)
	}
	probes := map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe, "startup": c.StartupProbe}
	wantPath := map[string]string{"liveness": "/healthz", "readiness": "/readyz", "startup": "/readyz"}
	for name, p := range probes {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s probe: not an HTTP GET", name)
			continue
		}
		g := p.HTTPGet
		host := g.Host
		if host == "" {
			// kubelet asks the pod's IP, which is the node's: only a
			// wildcard listener is sure to include it.
			host = "0.0.0.0"
		}
		if g.Path != wantPath[name] || g.Port.String() != healthPort || host != healthIP {
			t.Errorf("%s probe asks %s:%s%s; overlayd serves %s:%s, want path %s", name, g.Host, g.Port.String(), g.Path, healthIP, healthPort, wantPath[name])
		}
	}

	envFrom := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			envFrom[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	for name, field := range map[string]string{"NODE_NAME": "spec.nodeName", "POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"} {
		if envFrom[name] != field {
			t.Errorf("env %s comes from %q, want the downward API's %s", name, envFrom[name], field)
		}
	}

	// net-conf.json: the ConfigMap, mounted as a directory where the
	// default --net-config-path points.
	netConfPath := defaults["net-config-path"]
	if v, ok := flagValue(c.Args, "net-config-path"); ok {
		netConfPath = v
	}
	m := mountAt(c, path.Dir(netConfPath))
	if m == nil {
		t.Fatalf("nothing mounted at %s", path.Dir(netConfPath))
	}
	if m.SubPath != "" {
		t.Errorf("%s is a subPath mount: ConfigMap changes would never reach the running pod", m.MountPath)
	}
	v := volume(spec, m.Name)
	if v == nil || v.ConfigMap == nil {
		t.Fatalf("%s is not a ConfigMap volume", m.MountPath)
	}
	cm := configMap(t, objs, v.ConfigMap.Name)
	if _, ok := cm.Data[path.Base(netConfPath)]; !ok {
		t.Errorf("ConfigMap %s has no %s", cm.Name, path.Base(netConfPath))
	}

	// subnet.env: written on the node where the flannel CNI plugin reads it
	// (its default, which the shipped conflist keeps).
	subnetFile := defaults["subnet-file"]
	if v, ok := flagValue(c.Args, "subnet-file"); ok {
		subnetFile = v
	}
	if subnetFile != "/run/flannel/subnet.env" {
		t.Errorf("--subnet-file %s: the flannel CNI plugin reads /run/flannel/subnet.env", subnetFile)
	}
	hostPathAt(t, spec, c, path.Dir(subnetFile), path.Dir(subnetFile))
	hostPathAt(t, spec, c, "/run/xtables.lock", "/run/xtables.lock")

	// The init containers write the node's CNI directories.
	plugins := container(t, spec, "install-cni-plugins", true)
	hostPathAt(t, spec, plugins, "/host/opt/cni/bin", "/opt/cni/bin")
	conf := container(t, spec, "install-cni-conf", true)
	hostPathAt(t, spec, conf, "/host/etc/cni/net.d", "/etc/cni/net.d")
	if m := mountAt(conf, "/etc/kube-overlayd"); m == nil || volume(spec, m.Name).ConfigMap == nil {
		t.Error("install-cni-conf does not mount the ConfigMap at /etc/kube-overlayd")
	}
	for _, ic := range spec.InitContainers {
		if ic.Image != c.Image {
			t.Errorf("init container %s runs %s, overlayd runs %s: the plugins must come from the same release", ic.Name, ic.Image, c.Image)
		}
	}
}

// TestDaemonSetCommandLine runs the real binary with the DaemonSet's
// arguments and environment and the ConfigMap's net-conf.json, in a network
// namespace of its own that has no network: overlayd accepts every flag
// (a bad flag exits 2), parses and validates net-conf.json with all backend
// options, and stops only when it looks for the node's external interface.
func TestDaemonSetCommandLine(t *testing.T) {
	ds := daemonSet(t, overlaydObjects(t), "overlayd")
	c := container(t, &ds.Spec.Template.Spec, "overlayd", false)
	dir := t.TempDir()
	netConf := filepath.Join(dir, "net-conf.json")
	cm := configMap(t, overlaydObjects(t), "kube-overlayd-cfg")
	if err := os.WriteFile(netConf, []byte(cm.Data["net-conf.json"]), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := append(slices.Clone(c.Args), "--net-config-path="+netConf, "--subnet-file="+filepath.Join(dir, "subnet.env"))
	cmd := exec.CommandContext(ctx, overlaydBin, args...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "NODE_NAME=node-a", "POD_NAME=overlayd-abcde", "POD_NAMESPACE=" + ds.Namespace}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("overlayd %v: %v, want exit status 1 (a run-time error, not a usage error)\n%s", args, err, output.String())
	}
	if !strings.Contains(output.String(), "choosing the external interface") {
		t.Errorf("overlayd stopped before looking for the external interface:\n%s", output.String())
	}
}

// TestInitContainerScripts runs the init containers' shell scripts, with
// the node's and the image's directories moved into a temporary directory:
// the flannel plugin is always (re)installed, the other plugins only where
// the node has none, and the conflist is the ConfigMap's.
func TestInitContainerScripts(t *testing.T) {
	ds := daemonSet(t, overlaydObjects(t), "overlayd")
	spec := &ds.Spec.Template.Spec
	dir := t.TempDir()
	host := filepath.Join(dir, "host")
	image := filepath.Join(dir, "image", "opt", "cni", "bin")
	cfg := filepath.Join(dir, "etc", "kube-overlayd")
	hostBin, hostConf := filepath.Join(host, "opt", "cni", "bin"), filepath.Join(host, "etc", "cni", "net.d")
	for _, d := range []string{hostBin, hostConf, image, cfg} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"flannel", "bridge", "host-local", "loopback", "portmap"} {
		write(t, filepath.Join(image, p), "image "+p, 0o755)
	}
	// The node already has an old flannel and a bridge of its own.
	write(t, filepath.Join(hostBin, "flannel"), "node flannel", 0o755)
	write(t, filepath.Join(hostBin, "bridge"), "node bridge", 0o755)
	cm := configMap(t, overlaydObjects(t), "kube-overlayd-cfg")
	write(t, filepath.Join(cfg, "cni-conf.json"), cm.Data["cni-conf.json"], 0o644)

	moved := strings.NewReplacer("/host/", host+"/", "/opt/cni/bin/", image+"/", "/etc/kube-overlayd/", cfg+"/")
	for _, name := range []string{"install-cni-plugins", "install-cni-conf"} {
		c := container(t, spec, name, true)
		if len(c.Command) != 3 || c.Command[0] != "/bin/sh" {
			t.Fatalf("%s: command %q is not /bin/sh -ec <script>", name, c.Command)
		}
		out, err := exec.Command("/bin/sh", c.Command[1], moved.Replace(c.Command[2])).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, out)
		}
		t.Logf("%s:\n%s", name, out)
	}

	want := map[string]string{"flannel": "image flannel", "bridge": "node bridge", "host-local": "image host-local", "loopback": "image loopback", "portmap": "image portmap"}
	for p, content := range want {
		if got := read(t, filepath.Join(hostBin, p)); got != content {
			t.Errorf("node's /opt/cni/bin/%s is %q, want %q", p, got, content)
		}
	}
	if fi, err := os.Stat(filepath.Join(hostBin, "host-local")); err != nil || fi.Mode().Perm()&0o111 == 0 {
		t.Errorf("installed host-local is not executable: %v", err)
	}
	if got := read(t, filepath.Join(hostConf, "10-overlayd.conflist")); got != cm.Data["cni-conf.json"] {
		t.Errorf("installed conflist differs from the ConfigMap's:\n%s", got)
	}
	for _, d := range []string{hostBin, hostConf} {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			if strings.Contains(e.Name(), "overlayd-new") {
				t.Errorf("temporary file left behind: %s", filepath.Join(d, e.Name()))
			}
		}
	}
}

func write(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, p string) string {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
