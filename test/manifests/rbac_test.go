package manifests

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// rbacKinds are the kinds that make up overlayd's RBAC.
var rbacKinds = []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}

func rbacObjects(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if slices.Contains(rbacKinds, o.GetKind()) {
			out = append(out, o)
		}
	}
	return out
}

// TestRBACIsTheProvenOne: the RBAC objects of kube-overlayd.yml are those of
// Documentation/rbac.yml (proven least privilege by subnet/kube's TestRBAC),
// the same objects with the same rules, rule for rule. Namespaces differ
// where the DaemonSet's namespace requires it, and nowhere else:
//   - the ServiceAccount, and every binding's subject, is in the DaemonSet's
//     namespace: that is the identity its pods run as;
//   - the overlayd-leases Role and RoleBinding are in the DaemonSet's
//     namespace: the DaemonSet sets POD_NAMESPACE, and overlayd keeps its
//     Lease objects (lease mode) in that namespace;
//   - overlayd-events stays in "default", where Events about Nodes live.
func TestRBACIsTheProvenOne(t *testing.T) {
	proven := rbacObjects(load(t, rbacManifest))
	shipped := rbacObjects(overlaydObjects(t))
	ds := daemonSet(t, overlaydObjects(t), "overlayd")
	ns := ds.Namespace
	if ns == "" {
		t.Fatal("the DaemonSet has no namespace")
	}
	if !slices.ContainsFunc(ds.Spec.Template.Spec.Containers[0].Env, func(e corev1.EnvVar) bool {
		return e.Name == "POD_NAMESPACE" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace"
	}) {
		t.Error("the DaemonSet does not set POD_NAMESPACE from metadata.namespace: the Leases would not be in its namespace")
	}

	// The namespace each proven object must have in the shipped manifest.
	wantNamespace := func(o *unstructured.Unstructured) string {
		switch {
		case o.GetNamespace() == "":
			return "" // cluster-scoped
		case o.GetName() == "overlayd-events":
			return "default"
		default:
			return ns
		}
	}
	key := func(o *unstructured.Unstructured) string { return o.GetKind() + " " + o.GetName() }
	var provenKeys, shippedKeys []string
	for _, o := range proven {
		provenKeys = append(provenKeys, key(o))
	}
	for _, o := range shipped {
		shippedKeys = append(shippedKeys, key(o))
	}
	slices.Sort(provenKeys)
	slices.Sort(shippedKeys)
	if !slices.Equal(provenKeys, shippedKeys) {
		t.Fatalf("RBAC objects differ:\n%s has   %v\n%s has %v", rbacManifest, provenKeys, overlaydManifest, shippedKeys)
	}

	for _, p := range proven {
		s := find(t, shipped, p.GetKind(), p.GetName())
		if got, want := s.GetNamespace(), wantNamespace(p); got != want {
			t.Errorf("%s: namespace %q, want %q", key(p), got, want)
		}
		switch p.GetKind() {
		case "ClusterRole":
			pr, sr := typed[rbacv1.ClusterRole](t, p), typed[rbacv1.ClusterRole](t, s)
			if !equality.Semantic.DeepEqual(pr.Rules, sr.Rules) || pr.AggregationRule != nil || sr.AggregationRule != nil {
				t.Errorf("%s: rules differ:\n%s\nvs proven\n%s", key(p), yamlString(sr.Rules), yamlString(pr.Rules))
			}
		case "Role":
			pr, sr := typed[rbacv1.Role](t, p), typed[rbacv1.Role](t, s)
			if !equality.Semantic.DeepEqual(pr.Rules, sr.Rules) {
				t.Errorf("%s: rules differ:\n%s\nvs proven\n%s", key(p), yamlString(sr.Rules), yamlString(pr.Rules))
			}
		case "ClusterRoleBinding":
			pb, sb := typed[rbacv1.ClusterRoleBinding](t, p), typed[rbacv1.ClusterRoleBinding](t, s)
			checkBinding(t, key(p), pb.RoleRef, sb.RoleRef, pb.Subjects, sb.Subjects, ns)
		case "RoleBinding":
			pb, sb := typed[rbacv1.RoleBinding](t, p), typed[rbacv1.RoleBinding](t, s)
			checkBinding(t, key(p), pb.RoleRef, sb.RoleRef, pb.Subjects, sb.Subjects, ns)
		case "ServiceAccount":
			if s.GetName() != ds.Spec.Template.Spec.ServiceAccountName {
				t.Errorf("the DaemonSet runs as %q, the ServiceAccount is %q", ds.Spec.Template.Spec.ServiceAccountName, s.GetName())
			}
		}
	}
}

// checkBinding: same role, same subjects, the subjects' namespace moved to
// the DaemonSet's.
func checkBinding(t *testing.T, name string, provenRef, shippedRef rbacv1.RoleRef, provenSubjects, shippedSubjects []rbacv1.Subject, ns string) {
	t.Helper()
	if provenRef != shippedRef {
		t.Errorf("%s: roleRef %+v, proven %+v", name, shippedRef, provenRef)
	}
	want := slices.Clone(provenSubjects)
	for i := range want {
		if want[i].Kind == rbacv1.ServiceAccountKind {
			want[i].Namespace = ns
		}
	}
	if !equality.Semantic.DeepEqual(want, shippedSubjects) {
		t.Errorf("%s: subjects %s, want %s", name, yamlString(shippedSubjects), yamlString(want))
	}
}
