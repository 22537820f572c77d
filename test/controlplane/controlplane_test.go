package controlplane

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// TestRealAPIServer proves the helper gives a real API server: objects are
// validated and stored, optimistic concurrency is enforced, RBAC is on.
func TestRealAPIServer(t *testing.T) {
	start := time.Now()
	cp := StartT(t, Options{})
	t.Logf("control plane ready in %s", time.Since(start).Round(time.Millisecond))
	ctx := context.Background()
	admin := kubernetes.NewForConfigOrDie(cp.Config(Admin))

	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}, Spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24"}}
	created, err := admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node: %v", err)
	}
	got, err := admin.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get node: %v", err)
	}
	if got.Spec.PodCIDR != "10.244.1.0/24" || got.UID == "" {
		t.Fatalf("stored node %+v", got.Spec)
	}

	patch := []byte(`{"metadata":{"annotations":{"overlayd.io/public-ip":"198.18.0.11"}}}`)
	patched, err := admin.CoreV1().Nodes().Patch(ctx, "node-a", types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		t.Fatalf("patch node: %v", err)
	}
	if patched.Annotations["overlayd.io/public-ip"] != "198.18.0.11" || patched.ResourceVersion == created.ResourceVersion {
		t.Fatalf("patch not applied: %v rv %s", patched.Annotations, patched.ResourceVersion)
	}

	// An update carrying the resourceVersion from before the patch is stale.
	stale := created.DeepCopy()
	stale.Labels = map[string]string{"stale": "true"}
	_, err = admin.CoreV1().Nodes().Update(ctx, stale, metav1.UpdateOptions{})
	if !apierrors.IsConflict(err) {
		t.Fatalf("update with stale resourceVersion: err = %v, want a conflict", err)
	}

	// The API server validates: an invalid podCIDR is rejected.
	bad := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}, Spec: corev1.NodeSpec{PodCIDR: "not-a-cidr"}}
	if _, err := admin.CoreV1().Nodes().Create(ctx, bad, metav1.CreateOptions{}); !apierrors.IsInvalid(err) {
		t.Fatalf("create invalid node: err = %v, want invalid", err)
	}

	// RBAC is on: a service account without bindings may not list nodes.
	nobody := kubernetes.NewForConfigOrDie(cp.Config("kube-system/nobody"))
	if _, err := nobody.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("list nodes as unbound service account: err = %v, want forbidden", err)
	}
}

func TestApplyManifest(t *testing.T) {
	cp := StartT(t, Options{})
	ctx := context.Background()
	manifest := []byte(`
apiVersion: v1
kind: Namespace
metadata:
  name: applied
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cm
  namespace: applied
data:
  k: v
`)
	if _, err := cp.Apply(ctx, Admin, manifest, ApplyOptions{DryRun: true}); err == nil {
		t.Fatal("dry run of a ConfigMap in a namespace that does not exist yet was accepted")
	}
	objs, err := cp.Apply(ctx, Admin, manifest, ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 {
		t.Fatalf("applied %d objects", len(objs))
	}
	admin := kubernetes.NewForConfigOrDie(cp.Config(Admin))
	cm, err := admin.CoreV1().ConfigMaps("applied").Get(ctx, "cm", metav1.GetOptions{})
	if err != nil || cm.Data["k"] != "v" {
		t.Fatalf("configmap %v %v", cm, err)
	}
	bad := []byte("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n  namespace: applied\n")
	if _, err := cp.Apply(ctx, Admin, bad, ApplyOptions{DryRun: true}); err == nil || !strings.Contains(err.Error(), "ConfigMap applied/Bad_Name") {
		t.Fatalf("invalid object: err = %v", err)
	}
}
