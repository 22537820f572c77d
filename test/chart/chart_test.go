// Package chart proves the Helm chart Documentation/chart/overlayd with the
// real helm (hack/tools/helm): it lints clean, a wrong value fails at
// render time naming the value, the committed manifests are its rendering,
// the Canal kustomize component makes the chart's Canal variant, and its
// renderings for the value sets an operator uses are accepted by the real
// API server and by overlayd's own net-conf.json parser.
package chart

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/overlayd/overlayd/test/controlplane"
)

const (
	repoRoot  = "../.."
	chartPath = "Documentation/chart/overlayd"
	namespace = "kube-overlayd"
)

func repoPath(p string) string { return filepath.Join(repoRoot, filepath.FromSlash(p)) }

// helmBin is the real helm, built by `make helm-bin`.
func helmBin(t testing.TB) string {
	t.Helper()
	bins, err := controlplane.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(bins, "helm")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("helm missing in %s: run `make helm-bin`", bins)
	}
	return bin
}

// helm runs helm with its state in a directory of the test's own.
func helm(t testing.TB, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(helmBin(t), args...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home, "KUBECONFIG=/dev/null")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// valueSet is a set of values an operator passes, as --set flags or a
// values file.
type valueSet struct {
	name   string
	set    []string // --set
	values string   // a values file's content
}

func (v valueSet) args(t testing.TB) []string {
	var args []string
	for _, s := range v.set {
		args = append(args, "--set", s)
	}
	if v.values != "" {
		// Not t.TempDir(): helm splits --values at commas, which test
		// names have.
		dir, err := os.MkdirTemp("", "overlayd-values-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		f := filepath.Join(dir, "values.yaml")
		if err := os.WriteFile(f, []byte(v.values), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--values", f)
	}
	return args
}

// render runs helm template on the chart with vs.
func render(t testing.TB, vs valueSet) []*unstructured.Unstructured {
	t.Helper()
	out, stderr, err := helm(t, append([]string{"template", "overlayd", repoPath(chartPath), "--namespace", namespace}, vs.args(t)...)...)
	if err != nil {
		t.Fatalf("helm template (%s) %v: %v\n%s%s", vs.name, vs.args(t), err, stderr, out)
	}
	objs, err := controlplane.DecodeManifest([]byte(out))
	if err != nil {
		t.Fatalf("helm template (%s): %v", vs.name, err)
	}
	return objs
}

func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

// TestCommittedManifestsAreTheRendering renders the manifests as `make
// manifests` does, into a temporary directory, and compares them byte for
// byte with the committed ones.
func TestCommittedManifestsAreTheRendering(t *testing.T) {
	out := t.TempDir()
	abs, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(abs, "hack", "render-manifests.sh"), helmBin(t), chartPath, out)
	cmd.Dir = abs
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/render-manifests.sh: %v\n%s", err, b)
	}
	for _, f := range []string{"kube-overlayd.yml", "canal/calico-policy-only.yml"} {
		want, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(repoPath("Documentation/" + f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("Documentation/%s is not the chart's rendering: run `make manifests` and commit the result\n%s", f, lineDiff(string(got), string(want)))
		}
	}
}

// lineDiff names the first line where two texts differ.
func lineDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < max(len(g), len(w)); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return "line " + strconv.Itoa(i+1) + ":\n  committed: " + gl + "\n  rendered:  " + wl
		}
	}
	return ""
}
