package kube

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/overlayd/overlayd/test/controlplane"
)

// rbacFile is the shipped manifest: the tests prove this very file.
const rbacFile = "../../Documentation/rbac.yml"

func loadRBAC(t *testing.T) []runtime.Object {
	t.Helper()
	f, err := os.Open(rbacFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := utilyaml.NewYAMLReader(bufio.NewReader(f))
	var objs []runtime.Object
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", rbacFile, err)
		}
		var probe map[string]any
		if err := yaml.Unmarshal(doc, &probe); err != nil {
			t.Fatalf("%s: %v", rbacFile, err)
		}
		if len(probe) == 0 {
			continue // only comments
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", rbacFile, err)
		}
		objs = append(objs, obj)
	}
	return objs
}

// applyRBAC creates or replaces the objects.
func applyRBAC(t *testing.T, c kubernetes.Interface, objs []runtime.Object) {
	t.Helper()
	ctx := context.Background()
	for _, obj := range objs {
		var err error
		switch o := obj.DeepCopyObject().(type) {
		case *corev1.ServiceAccount:
			_, err = c.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRole:
			if _, err = c.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
				_, err = c.RbacV1().ClusterRoles().Update(ctx, o, metav1.UpdateOptions{})
			}
		case *rbacv1.ClusterRoleBinding:
			_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.Role:
			if _, err = c.RbacV1().Roles(o.Namespace).Create(ctx, o, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
				_, err = c.RbacV1().Roles(o.Namespace).Update(ctx, o, metav1.UpdateOptions{})
			}
		case *rbacv1.RoleBinding:
			_, err = c.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		default:
			t.Fatalf("%s: unexpected %T", rbacFile, obj)
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("applying %T: %v", obj, err)
		}
	}
}

// withoutVerb returns the roles of objs with p's verb removed from the rule
// that grants it, and whether there was such a rule.
func withoutVerb(objs []runtime.Object, p permission) ([]runtime.Object, bool) {
	resource := p.resource
	if p.subresource != "" {
		resource += "/" + p.subresource
	}
	found := false
	strip := func(rules []rbacv1.PolicyRule) []rbacv1.PolicyRule {
		var out []rbacv1.PolicyRule
		for _, r := range rules {
			if slices.Contains(r.APIGroups, p.group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, p.verb) {
				found = true
				r.Verbs = slices.DeleteFunc(slices.Clone(r.Verbs), func(v string) bool { return v == p.verb })
				if len(r.Verbs) == 0 {
					continue
				}
			}
			out = append(out, r)
		}
		return out
	}
	var roles []runtime.Object
	for _, obj := range objs {
		switch o := obj.DeepCopyObject().(type) {
		case *rbacv1.ClusterRole:
			o.Rules = strip(o.Rules)
			roles = append(roles, o)
		case *rbacv1.Role:
			if p.namespace == o.Namespace {
				o.Rules = strip(o.Rules)
			}
			roles = append(roles, o)
		}
	}
	return roles, found
}

// runError starts a lease store and returns what Run returns (it fails
// at once when permissions are missing).
func runError(t *testing.T, cfg Config) error {
	t.Helper()
	m, err := newManager(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return m.Run(ctx)
}

// TestRBAC proves Documentation/rbac.yml: with it the restricted service
// account runs both lease modes; without any one permission the agent
// refuses to start, naming exactly what is forbidden.
func TestRBAC(t *testing.T) {
	t.Parallel()
	c := startCluster(t, controlplane.Options{})
	ctx := context.Background()
	objs := loadRBAC(t)
	applyRBAC(t, c.admin, objs)
	sa := clientFor(t, c.cp, "kube-system/overlayd")
	nobody := clientFor(t, c.cp, "kube-system/nobody")
	podNet := mustNet(t, `{"Network": "10.244.0.0/16"}`)
	leaseNet := mustNet(t, `{"Network": "10.245.0.0/16", "LeaseMode": "lease"}`)
	createNode(t, c.admin, "rbac-a", []string{"10.244.1.0/24"}, nil)
	createNodes(t, c.admin, []string{"rbac-l"})
	podCfg := func(client kubernetes.Interface) Config {
		return Config{Client: client, NodeName: "rbac-a", Net: podNet, SetNodeNetworkUnavailable: true}
	}
	leaseCfg := func(client kubernetes.Interface) Config {
		return Config{Client: client, NodeName: "rbac-l", Net: leaseNet, SetNodeNetworkUnavailable: true, LeaseDuration: 3 * time.Second}
	}

	t.Run("the documented RBAC is enough", func(t *testing.T) {
		a := startAgent(t, podCfg(sa))
		a.acquire(t, vxlanAttrs("198.18.6.1", "0a:58:0a:f4:06:01"))
		if err := a.Publish(ctx, vxlanAttrs("198.18.6.11", "0a:58:0a:f4:06:11")); err != nil {
			t.Fatal(err)
		}
		n, err := c.admin.CoreV1().Nodes().Get(ctx, "rbac-a", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if n.Annotations["overlayd.io/public-ip"] != "198.18.6.11" || !networkAvailable(n) {
			t.Errorf("node rbac-a: annotations %v, conditions %+v", n.Annotations, n.Status.Conditions)
		}
		// Least privilege: the agent's identity cannot change a Node's spec.
		_, err = sa.CoreV1().Nodes().Patch(ctx, "rbac-a", types.MergePatchType, []byte(`{"spec":{"unschedulable":true}}`), metav1.PatchOptions{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("patching a Node's spec as the service account: %v, want forbidden", err)
		}
		// Events: a later node claiming rbac-a's podCIDR is reported on itself.
		waitFor(t, "a later second", func() (bool, string) {
			return time.Now().Truncate(time.Second).After(n.CreationTimestamp.Time), ""
		})
		createNode(t, c.admin, "rbac-rogue", []string{"10.244.1.0/24"}, nil)
		waitFor(t, "the service account's Event on rbac-rogue", func() (bool, string) {
			return len(nodeEvents(t, c.admin, "rbac-rogue", "SubnetConflict")) > 0, "none"
		})

		l := startAgent(t, leaseCfg(sa))
		lease := l.acquire(t, vxlanAttrs("198.18.6.2", "0a:58:0a:f5:06:02"))
		if err := l.Publish(ctx, vxlanAttrs("198.18.6.12", "0a:58:0a:f5:06:12")); err != nil {
			t.Fatal(err)
		}
		le, err := c.admin.CoordinationV1().Leases("kube-system").Get(ctx, leaseName(lease.Subnet), metav1.GetOptions{})
		if err != nil || le.Annotations["overlayd.io/public-ip"] != "198.18.6.12" {
			t.Errorf("Lease of rbac-l: %v, %v", err, le)
		}
		// Its renewals go through too.
		waitFor(t, "a renewal by the service account", func() (bool, string) {
			now, err := c.admin.CoordinationV1().Leases("kube-system").Get(ctx, le.Name, metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			return now.Spec.RenewTime.After(le.Spec.RenewTime.Time), "not renewed yet"
		})
		if n := l.logs.FilterMessageSnippet("failed").Len(); n > 0 {
			t.Errorf("the lease-mode agent logged %d failures", n)
		}
	})

	t.Run("an unbound service account is refused", func(t *testing.T) {
		const who = `user "system:serviceaccount:kube-system:nobody"`
		for _, tc := range []struct {
			cfg  Config
			want string
		}{
			{podCfg(nobody), who + ` is forbidden to list nodes, watch nodes, patch nodes/status "rbac-a", ` +
				`create events in namespace default, patch events in namespace default; overlayd needs these in podCIDR lease mode (see Documentation/rbac.md)`},
			{leaseCfg(nobody), who + ` is forbidden to get nodes "rbac-l", list nodes, watch nodes, patch nodes/status "rbac-l", ` +
				`get leases.coordination.k8s.io in namespace kube-system, list leases.coordination.k8s.io in namespace kube-system, ` +
				`watch leases.coordination.k8s.io in namespace kube-system, create leases.coordination.k8s.io in namespace kube-system, ` +
				`update leases.coordination.k8s.io in namespace kube-system, create events in namespace default, patch events in namespace default; ` +
				`overlayd needs these in lease lease mode (see Documentation/rbac.md)`},
		} {
			a := startAgent(t, tc.cfg)
			err := a.runError(t)
			if err == nil || err.Error() != "RBAC: "+tc.want {
				t.Errorf("Run as nobody:\n got %v\nwant RBAC: %s", err, tc.want)
			}
			if _, aerr := a.Acquire(ctx, vxlanAttrs("198.18.6.3", "0a:58:0a:f4:06:03")); aerr == nil || err == nil || aerr.Error() != err.Error() {
				t.Errorf("Acquire as nobody: %v; want Run's error", aerr)
			}
		}
	})

	t.Run("the RBAC minus any one permission is refused", func(t *testing.T) {
		for _, cfg := range []Config{podCfg(sa), leaseCfg(sa)} {
			m, err := newManager(cfg)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range m.mode.permissions() {
				less, found := withoutVerb(objs, p)
				if !found {
					t.Errorf("%s mode needs %q but %s does not grant it", cfg.Net.LeaseMode, p, rbacFile)
					continue
				}
				applyRBAC(t, c.admin, less)
				want := fmt.Sprintf(`RBAC: user "system:serviceaccount:kube-system:overlayd" is forbidden to %s; overlayd needs these in %s lease mode`, p, cfg.Net.LeaseMode)
				// RBAC changes reach the authorizer within moments; wait for exactly this refusal.
				waitFor(t, "a refusal naming "+p.String(), func() (bool, string) {
					err := runError(t, cfg)
					return err != nil && strings.HasPrefix(err.Error(), want), fmt.Sprint(err)
				})
				applyRBAC(t, c.admin, objs)
			}
			waitFor(t, "the full RBAC to pass again", func() (bool, string) {
				err := runError(t, cfg)
				return err == nil, fmt.Sprint(err)
			})
		}
	})
}
