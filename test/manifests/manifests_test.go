// Package manifests proves the deployment files shipped in Documentation/
// and hack/kind: the real kube-apiserver accepts every object, the
// kustomizations render, the RBAC is the one Documentation/rbac.yml proves,
// the CNI and network configurations parse with the parsers that will read
// them, and the DaemonSet's command line, RBAC and configuration bring the
// real overlayd binary up on nodes built from network namespaces.
package manifests

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/overlayd/overlayd/test/controlplane"
	"github.com/overlayd/overlayd/test/lab"
)

// repoRoot is the repository, seen from this package's directory.
const repoRoot = "../.."

// The shipped files this package is about.
const (
	overlaydManifest = "Documentation/kube-overlayd.yml"
	rbacManifest     = "Documentation/rbac.yml"
	calicoManifest   = "Documentation/canal/calico-policy-only.yml"
	kindConfig       = "hack/kind/kind-config.yaml"
	chartDir         = "Documentation/chart"
)

// renderedKustomizations are rendered and applied. Every other
// kustomization in the tree must be a component one of these uses.
var renderedKustomizations = []string{"Documentation", "hack/kind", "hack/kind/canal"}

// labPrefix names this package's network namespaces.
const labPrefix = "ovlM"

// overlaydBin is the binary under test, built once by TestMain.
var overlaydBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "overlayd-manifests-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	overlaydBin = filepath.Join(dir, "overlayd")
	build := exec.Command("go", "build", "-o", overlaydBin, "../../cmd/overlayd")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building overlayd: %v\n%s", err, out)
		os.Exit(1)
	}
	lab.Sweep(labPrefix) // leftovers of a crashed earlier run
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func repoPath(p string) string { return filepath.Join(repoRoot, filepath.FromSlash(p)) }

func readFile(t testing.TB, p string) []byte {
	t.Helper()
	data, err := os.ReadFile(repoPath(p))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// decode splits a multi-document manifest into objects.
func decode(t testing.TB, name string, data []byte) []*unstructured.Unstructured {
	t.Helper()
	objs, err := controlplane.DecodeManifest(data)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if len(objs) == 0 {
		t.Fatalf("%s: no objects", name)
	}
	return objs
}

func load(t testing.TB, p string) []*unstructured.Unstructured {
	t.Helper()
	return decode(t, p, readFile(t, p))
}

// render builds a kustomization (a directory of the repository, or an
// absolute one) the way `kubectl apply -k` does (same library, default
// options: no files from outside the kustomization's root, no plugins).
func render(t testing.TB, dir string) []byte {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	abs := dir
	if !filepath.IsAbs(dir) {
		var err error
		if abs, err = filepath.Abs(repoPath(dir)); err != nil {
			t.Fatal(err)
		}
	}
	m, err := k.Run(filesys.MakeFsOnDisk(), abs)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out, err := m.AsYaml()
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	return out
}

// source is one way objects reach a cluster: a manifest file or the output
// of a kustomization.
type source struct {
	name string
	objs []*unstructured.Unstructured
}

// manifestFiles are every YAML manifest under Documentation/ (not the
// kustomization files themselves), so a new manifest is tested without
// being listed here.
func manifestFiles(t testing.TB) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(repoPath("Documentation"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			// The Helm chart's files are templates; test/chart renders them.
			if p == repoPath(chartDir) {
				return filepath.SkipDir
			}
			return nil
		}
		ext := filepath.Ext(p)
		if (ext == ".yml" || ext == ".yaml") && d.Name() != "kustomization.yaml" {
			rel, _ := filepath.Rel(repoRoot, p)
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{overlaydManifest, rbacManifest, calicoManifest} {
		if !slices.Contains(files, want) {
			t.Fatalf("%s not found among %v", want, files)
		}
	}
	return files
}

// sources are all manifests, the rendered kustomizations and the
// kustomizations the documentation shows.
func sources(t testing.TB) []source {
	t.Helper()
	var out []source
	for _, f := range manifestFiles(t) {
		out = append(out, source{name: f, objs: load(t, f)})
	}
	for _, dir := range renderedKustomizations {
		out = append(out, source{name: "kustomize build " + dir, objs: decode(t, dir, render(t, dir))})
	}
	for _, ex := range docExamples(t) {
		out = append(out, source{name: ex.name, objs: decode(t, ex.name, render(t, ex.dir))})
	}
	return out
}

// find returns the one object of kind and name in objs.
func find(t testing.TB, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	var found *unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			if found != nil {
				t.Fatalf("%s %s appears twice", kind, name)
			}
			found = o
		}
	}
	if found == nil {
		t.Fatalf("no %s %s", kind, name)
	}
	return found
}

// typed converts an object into its Go type, refusing fields the type does
// not have: a misspelt field is an error here, not a silently dropped
// setting.
func typed[T any](t testing.TB, u *unstructured.Unstructured) *T {
	t.Helper()
	out := new(T)
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, out, true); err != nil {
		t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
	}
	return out
}

// builtinTyped returns a typed copy of u when its kind is built into
// Kubernetes, or nil.
func builtinTyped(t testing.TB, u *unstructured.Unstructured) runtime.Object {
	t.Helper()
	obj, err := scheme.Scheme.New(u.GroupVersionKind())
	if err != nil {
		return nil
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, obj, true); err != nil {
		t.Errorf("%s %s/%s: %v", u.GetKind(), u.GetNamespace(), u.GetName(), err)
	}
	return obj
}

// overlaydObjects are the objects of Documentation/kube-overlayd.yml.
func overlaydObjects(t testing.TB) []*unstructured.Unstructured {
	return load(t, overlaydManifest)
}

func daemonSet(t testing.TB, objs []*unstructured.Unstructured, name string) *appsv1.DaemonSet {
	t.Helper()
	return typed[appsv1.DaemonSet](t, find(t, objs, "DaemonSet", name))
}

func configMap(t testing.TB, objs []*unstructured.Unstructured, name string) *corev1.ConfigMap {
	t.Helper()
	return typed[corev1.ConfigMap](t, find(t, objs, "ConfigMap", name))
}

func container(t testing.TB, spec *corev1.PodSpec, name string, init bool) *corev1.Container {
	t.Helper()
	list := spec.Containers
	if init {
		list = spec.InitContainers
	}
	for i := range list {
		if list[i].Name == name {
			return &list[i]
		}
	}
	t.Fatalf("no container %s (init: %t)", name, init)
	return nil
}

// yamlString renders v for a failure message.
func yamlString(v any) string {
	out, err := yaml.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(bytes.TrimSpace(out))
}

func TestKustomizationsRender(t *testing.T) {
	// Every kustomization in the tree is rendered, or is a component a
	// rendered one uses.
	used := map[string]bool{}
	for _, dir := range renderedKustomizations {
		used[dir] = true
		var k struct {
			Components []string `json:"components"`
		}
		if err := yaml.Unmarshal(readFile(t, dir+"/kustomization.yaml"), &k); err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		for _, c := range k.Components {
			used[filepath.ToSlash(filepath.Join(dir, c))] = true
		}
	}
	for _, top := range []string{"Documentation", "hack/kind"} {
		err := filepath.WalkDir(repoPath(top), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.Name() != "kustomization.yaml" {
				return err
			}
			rel, _ := filepath.Rel(repoRoot, filepath.Dir(p))
			if !used[filepath.ToSlash(rel)] {
				t.Errorf("%s/kustomization.yaml is neither rendered by this test nor a component of one that is", rel)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	base := decode(t, "Documentation", render(t, "Documentation"))
	plain := overlaydObjects(t)
	if got, want := objectKeys(base), objectKeys(plain); !slices.Equal(got, want) {
		t.Errorf("kustomize build Documentation has %v, %s has %v", got, overlaydManifest, want)
	}

	// kind: every overlayd container runs the image `make kind-up` loads.
	for _, dir := range []string{"hack/kind", "hack/kind/canal"} {
		ds := daemonSet(t, decode(t, dir, render(t, dir)), "overlayd")
		for _, c := range append(ds.Spec.Template.Spec.InitContainers, ds.Spec.Template.Spec.Containers...) {
			if c.Image != "overlayd:dev" || c.ImagePullPolicy != corev1.PullIfNotPresent {
				t.Errorf("%s: container %s has image %s, pull policy %s; want overlayd:dev, IfNotPresent (kind loads it, nothing can pull it)",
					dir, c.Name, c.Image, c.ImagePullPolicy)
			}
		}
	}

	// Canal: Calico's installer writes the only CNI network config; overlayd
	// still installs the plugins and runs unchanged.
	kindDS := daemonSet(t, decode(t, "hack/kind", render(t, "hack/kind")), "overlayd")
	canal := decode(t, "hack/kind/canal", render(t, "hack/kind/canal"))
	ds := daemonSet(t, canal, "overlayd")
	var inits []string
	for _, c := range ds.Spec.Template.Spec.InitContainers {
		inits = append(inits, c.Name)
	}
	if !slices.Equal(inits, []string{"install-cni-plugins"}) {
		t.Errorf("overlayd init containers with the canal component: %v, want only install-cni-plugins", inits)
	}
	if !equality.Semantic.DeepEqual(ds.Spec.Template.Spec.Containers, kindDS.Spec.Template.Spec.Containers) ||
		!equality.Semantic.DeepEqual(ds.Spec.Template.Spec.InitContainers[0], *container(t, &kindDS.Spec.Template.Spec, "install-cni-plugins", true)) {
		t.Errorf("the canal component changes more of overlayd than its CNI config installer:\n%s", yamlString(ds.Spec.Template.Spec))
	}
	calico := daemonSet(t, canal, "calico-node")
	if c := container(t, &calico.Spec.Template.Spec, "install-cni", true); !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == "CNI_CONF_NAME" && e.Value == "10-calico.conflist"
	}) {
		t.Errorf("calico's installer does not write 10-calico.conflist: %s", yamlString(c.Env))
	}
}

// objectKeys lists objects as "Kind namespace/name", sorted.
func objectKeys(objs []*unstructured.Unstructured) []string {
	var out []string
	for _, o := range objs {
		out = append(out, fmt.Sprintf("%s %s/%s", o.GetKind(), o.GetNamespace(), o.GetName()))
	}
	slices.Sort(out)
	return out
}
