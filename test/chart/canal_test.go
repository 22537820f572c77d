package chart

import (
	"os"
	"path/filepath"
	"testing"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/overlayd/overlayd/test/controlplane"
)

// TestCanalComponentIsTheChartsCanal: the kustomize way (the base
// Documentation with the component Documentation/canal) and the Helm way
// (canal.enabled=true) deploy the same objects, field for field.
func TestCanalComponentIsTheChartsCanal(t *testing.T) {
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	base, _ := filepath.Rel(dir, filepath.Join(root, "Documentation"))
	component, _ := filepath.Rel(dir, filepath.Join(root, "Documentation", "canal"))
	k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - " + base + "\ncomponents:\n  - " + component + "\n"
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build: %v", err)
	}
	out, err := m.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	kustomized, err := controlplane.DecodeManifest(out)
	if err != nil {
		t.Fatal(err)
	}
	helmed := render(t, valueSet{name: "Canal", set: []string{"canal.enabled=true", "namespace.create=true"}})
	byKey := func(objs []*unstructured.Unstructured) map[string]*unstructured.Unstructured {
		m := map[string]*unstructured.Unstructured{}
		for _, o := range objs {
			m[o.GetKind()+" "+o.GetNamespace()+"/"+o.GetName()] = o
		}
		return m
	}
	km, hm := byKey(kustomized), byKey(helmed)
	for key, ko := range km {
		ho, ok := hm[key]
		if !ok {
			t.Errorf("%s: kustomize only", key)
			continue
		}
		if !equality.Semantic.DeepEqual(ko.Object, ho.Object) {
			t.Errorf("%s differs:\nkustomize: %s\nhelm:      %s", key, yamlString(ko.Object), yamlString(ho.Object))
		}
	}
	for key := range hm {
		if _, ok := km[key]; !ok {
			t.Errorf("%s: helm only", key)
		}
	}
}
