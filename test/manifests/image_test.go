package manifests

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// entrypointScript is the image's entrypoint, as the Dockerfile writes it.
func entrypointScript(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`(?s)<<'EOF' /usr/local/bin/overlayd-entrypoint\n(.*?)\nEOF\n`).FindStringSubmatch(string(readFile(t, "Dockerfile")))
	if m == nil {
		t.Fatal("Dockerfile writes no /usr/local/bin/overlayd-entrypoint")
	}
	return m[1]
}

// TestImageFitsTheDaemonSet: the image has what the DaemonSet uses. Its
// entrypoint runs (the container sets no command of its own) and starts
// the binary the image holds; every CNI plugin the init container
// installs is built into /opt/cni/bin.
func TestImageFitsTheDaemonSet(t *testing.T) {
	dockerfile := string(readFile(t, "Dockerfile"))
	ds := daemonSet(t, overlaydObjects(t), "overlayd")
	c := container(t, &ds.Spec.Template.Spec, "overlayd", false)
	if len(c.Command) != 0 {
		t.Errorf("the overlayd container sets command %q: the image's entrypoint, which picks the iptables variant, would not run", c.Command)
	}
	if !strings.Contains(dockerfile, `ENTRYPOINT ["/usr/local/bin/overlayd-entrypoint"]`) {
		t.Error("the image's entrypoint is not overlayd-entrypoint")
	}
	if !strings.Contains(entrypointScript(t), `exec /usr/local/bin/overlayd "$@"`) ||
		!strings.Contains(dockerfile, "COPY --from=build /src/bin/overlayd /usr/local/bin/overlayd") {
		t.Error("the entrypoint does not run the overlayd binary the image holds")
	}

	script := container(t, &ds.Spec.Template.Spec, "install-cni-plugins", true).Command[2]
	built := map[string]string{
		"flannel":    "cp hack/tools/bin/cni/flannel /cni/",
		"bridge":     "plugins/main/bridge@",
		"host-local": "plugins/ipam/host-local@",
		"loopback":   "plugins/main/loopback@",
		"portmap":    "plugins/meta/portmap@",
	}
	for plugin, how := range built {
		if !strings.Contains(dockerfile, how) {
			t.Errorf("the image does not build %s into /opt/cni/bin", plugin)
		}
		if !regexp.MustCompile(`\b` + regexp.QuoteMeta(plugin) + `\b`).MatchString(script) {
			t.Errorf("install-cni-plugins does not install %s", plugin)
		}
	}
	if !strings.Contains(dockerfile, "COPY --from=build /cni/ /opt/cni/bin/") {
		t.Error("the plugins are not copied to /opt/cni/bin, where install-cni-plugins takes them from")
	}
}

// TestEntrypointPicksIPTablesVariant runs the image's entrypoint script
// with the real iptables-nft and iptables-legacy, each case in a network
// namespace of its own (iptables tables are per namespace). Debian's
// update-alternatives is replaced by a recorder, and the final exec of
// overlayd by echo.
func TestEntrypointPicksIPTablesVariant(t *testing.T) {
	script := entrypointScript(t)
	script = strings.Replace(script, `exec /usr/local/bin/overlayd "$@"`, `exec echo overlayd "$@"`, 1)
	dir := t.TempDir()
	entrypoint := filepath.Join(dir, "overlayd-entrypoint")
	write(t, entrypoint, script, 0o755)
	shims := filepath.Join(dir, "bin")
	if err := os.Mkdir(shims, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(shims, "update-alternatives"), "#!/bin/sh\necho \"$*\" >> \"$ALTERNATIVES_LOG\"\n", 0o755)

	cases := []struct {
		name  string
		setup string // shell commands run first, in the same namespace
		env   string
		want  string // the variant chosen; "" for a refusal
	}{
		{name: "no rules anywhere: nft", want: "nft"},
		{name: "more legacy rules", setup: "iptables-legacy -N X && iptables-legacy -A X -j RETURN && iptables-legacy -A X -j RETURN", want: "legacy"},
		{name: "more nft rules", setup: "iptables-nft -N X && iptables-nft -A X -j RETURN && iptables-legacy -N Y", want: "nft"},
		{name: "kubelet's hint in nft wins over more legacy rules", setup: "iptables-nft -t mangle -N KUBE-IPTABLES-HINT && iptables-legacy -N X && iptables-legacy -A X -j RETURN", want: "nft"},
		{name: "kubelet's hint in legacy wins over more nft rules", setup: "iptables-legacy -t mangle -N KUBE-IPTABLES-HINT && iptables-nft -N X && iptables-nft -A X -j RETURN", want: "legacy"},
		{name: "IPTABLES_MODE overrides", setup: "iptables-nft -t mangle -N KUBE-IPTABLES-HINT", env: "IPTABLES_MODE=legacy", want: "legacy"},
		{name: "a bad IPTABLES_MODE is refused", env: "IPTABLES_MODE=xtables", want: ""},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			log := filepath.Join(dir, "alternatives-"+string(rune('a'+i)))
			setup := tc.setup
			if setup == "" {
				setup = "true"
			}
			cmd := exec.Command("/bin/sh", "-ec", setup+"\nexec \"$0\" \"$@\"", entrypoint, "--ip-masq", "--healthz-port=9910")
			cmd.Env = []string{"PATH=" + shims + ":/usr/sbin:/usr/bin:/sbin:/bin", "ALTERNATIVES_LOG=" + log}
			if tc.env != "" {
				cmd.Env = append(cmd.Env, tc.env)
			}
			cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			if tc.want == "" {
				var exit *exec.ExitError
				if !errors.As(err, &exit) || exit.ExitCode() != 2 || stdout.Len() != 0 {
					t.Fatalf("%v, stdout %q: want exit status 2 and overlayd not started\n%s", err, stdout.String(), stderr.String())
				}
				return
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, stderr.String())
			}
			if got := strings.TrimSpace(stdout.String()); got != "overlayd --ip-masq --healthz-port=9910" {
				t.Errorf("overlayd started as %q, want the container's arguments passed on", got)
			}
			alternatives, _ := os.ReadFile(log)
			want := "--quiet --set iptables /usr/sbin/iptables-" + tc.want + "\n--quiet --set ip6tables /usr/sbin/ip6tables-" + tc.want + "\n"
			if string(alternatives) != want {
				t.Errorf("update-alternatives calls:\n%s\nwant\n%s(stderr: %s)", alternatives, want, stderr.String())
			}
		})
	}
}
