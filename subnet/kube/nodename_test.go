package kube

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/overlayd/overlayd/test/controlplane"
)

// TestNodeName: NODE_NAME wins; else the node of the agent's own pod, read
// from the API server; a pod not scheduled yet or not there is an error.
func TestNodeName(t *testing.T) {
	c := startCluster(t, controlplane.Options{})
	ctx := context.Background()
	const ns = "overlayd-pods"
	createNamespace(t, c, ns)
	// The ServiceAccount admission plugin wants the pods' account to exist.
	if _, err := c.admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for name, node := range map[string]string{"overlayd-x1": "node-7", "overlayd-pending": ""} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "overlayd", Image: "overlayd:test"}},
		}}
		if _, err := c.admin.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	for _, tt := range []struct {
		env        map[string]string
		want, fail string
	}{
		{env: map[string]string{"NODE_NAME": "from-env", "POD_NAME": "overlayd-x1", "POD_NAMESPACE": ns}, want: "from-env"},
		{env: map[string]string{"POD_NAME": "overlayd-x1", "POD_NAMESPACE": ns}, want: "node-7"},
		{env: map[string]string{"POD_NAME": "overlayd-pending", "POD_NAMESPACE": ns}, fail: "pod overlayd-pods/overlayd-pending has no node yet"},
		{env: map[string]string{"POD_NAME": "missing", "POD_NAMESPACE": ns}, fail: "looking up the node of pod overlayd-pods/missing"},
		{env: map[string]string{"POD_NAME": "overlayd-x1"}, fail: "set NODE_NAME"},
		{env: nil, fail: "set NODE_NAME"},
	} {
		got, err := NodeName(ctx, c.admin, func(k string) string { return tt.env[k] })
		switch {
		case tt.fail == "" && (err != nil || got != tt.want):
			t.Errorf("%v: %q, %v; want %q", tt.env, got, err, tt.want)
		case tt.fail != "" && (err == nil || !strings.Contains(err.Error(), tt.fail)):
			t.Errorf("%v: %q, %v; want an error containing %q", tt.env, got, err, tt.fail)
		}
	}
}
