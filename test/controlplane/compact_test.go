package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

// With Node watches served by etcd, a watch resuming from a resource
// version older than a compaction gets 410 Gone ("too old resource
// version"), while one from the current version works.
func TestCompactExpiresWatches(t *testing.T) {
	cp := StartT(t, Options{APIServerArgs: []string{"--watch-cache-sizes=nodes#0"}})
	ctx := context.Background()
	admin := kubernetes.NewForConfigOrDie(cp.Config(Admin))
	node, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	old := node.ResourceVersion
	for i := range 3 {
		patch := fmt.Sprintf(`{"metadata":{"annotations":{"n":"%d"}}}`, i)
		if node, err = admin.CoreV1().Nodes().Patch(ctx, "node-a", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	rev, err := cp.Compact(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("compacted etcd to revision %d", rev)

	w, err := admin.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{ResourceVersion: old})
	if err == nil {
		select {
		case ev := <-w.ResultChan():
			w.Stop()
			status, ok := ev.Object.(*metav1.Status)
			if ev.Type != watch.Error || !ok || status.Code != http.StatusGone {
				t.Fatalf("a watch from before the compaction got %s %#v, want an error 410 Gone", ev.Type, ev.Object)
			}
		case <-time.After(10 * time.Second):
			w.Stop()
			t.Fatal("a watch from before the compaction got nothing")
		}
	} else if !apierrors.IsResourceExpired(err) && !apierrors.IsGone(err) {
		t.Fatalf("a watch from before the compaction: %v, want 410 Gone", err)
	}

	w, err = admin.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{ResourceVersion: node.ResourceVersion})
	if err != nil {
		t.Fatalf("a watch from the current version: %v", err)
	}
	defer w.Stop()
	if _, err := admin.CoreV1().Nodes().Patch(ctx, "node-a", types.MergePatchType, []byte(`{"metadata":{"annotations":{"n":"x"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-w.ResultChan():
		if ev.Type != watch.Modified {
			t.Fatalf("a watch from the current version got %s %#v", ev.Type, ev.Object)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a watch from the current version saw no change")
	}
}
