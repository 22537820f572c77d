package kube

import (
	"context"
	"maps"
	"net/netip"
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/overlayd/overlayd/test/controlplane"
)

// TestSlimNodeDecodesWhatTheLeaseNeeds: decoding a full Node's protobuf as a
// slimNode yields its metadata and spec exactly, without status, labels,
// owner references, finalizers and managed fields.
func TestSlimNodeDecodesWhatTheLeaseNeeds(t *testing.T) {
	full := realisticNode(7, netip.MustParsePrefix("10.0.0.0/8"))
	full.UID, full.ResourceVersion = "4b1f7a6e-0000-4000-8000-000000000007", "12345"
	full.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Foo", Name: "x", UID: "u"}}
	full.Finalizers = []string{"example.com/keep"}
	full.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubelet", Operation: metav1.ManagedFieldsOperationUpdate,
		FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:status":{}}`)}}}
	full.Spec.Taints = []corev1.Taint{{Key: "k", Value: "v", Effect: corev1.TaintEffectNoSchedule}}
	data, err := full.Marshal()
	if err != nil {
		t.Fatal(err)
	}

	var slim slimNode
	if err := slim.Unmarshal(data); err != nil {
		t.Fatal(err)
	}
	wantMeta := *full.ObjectMeta.DeepCopy()
	wantMeta.Labels, wantMeta.OwnerReferences, wantMeta.Finalizers, wantMeta.ManagedFields = nil, nil, nil, nil
	if !reflect.DeepEqual(slim.ObjectMeta, wantMeta) {
		t.Errorf("metadata\n got %+v\nwant %+v", slim.ObjectMeta, wantMeta)
	}
	if !reflect.DeepEqual(slim.Spec, full.Spec) {
		t.Errorf("spec\n got %+v\nwant %+v", slim.Spec, full.Spec)
	}

	list := corev1.NodeList{ListMeta: metav1.ListMeta{ResourceVersion: "99", Continue: "c"}, Items: []corev1.Node{*full, *full}}
	data, err = list.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var slimList slimNodeList
	if err := slimList.Unmarshal(data); err != nil {
		t.Fatal(err)
	}
	if slimList.ResourceVersion != "99" || slimList.Continue != "c" || len(slimList.Items) != 2 || slimList.Items[1].Spec.PodCIDR != full.Spec.PodCIDR {
		t.Errorf("list %+v", slimList)
	}

	if err := slim.Unmarshal(data[:len(data)/2]); err == nil {
		t.Error("a truncated message decoded without error")
	}
}

func TestSlimNodeListWatchNeedsARealClient(t *testing.T) {
	real, err := kubernetes.NewForConfig(&rest.Config{Host: "https://198.18.0.1:6443/prefix"})
	if err != nil {
		t.Fatal(err)
	}
	if slimNodeListWatch(real) == nil {
		t.Error("no slim list-watch for a REST clientset")
	}
	if slimNodeListWatch(fake.NewClientset()) != nil {
		t.Error("a slim list-watch for a fake clientset")
	}
}

// TestSlimNodeListWatchAgainstTheAPIServer: the slim list and watch decode
// what the real API server sends, events of every type included.
func TestSlimNodeListWatchAgainstTheAPIServer(t *testing.T) {
	t.Parallel()
	c := startCluster(t, controlplane.Options{})
	ctx := context.Background()
	network := netip.MustParsePrefix("10.0.0.0/8")
	for i := range 3 {
		if _, err := c.admin.CoreV1().Nodes().Create(ctx, realisticNode(i, network), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	lw := slimNodeListWatch(c.admin).(cache.ListerWatcherWithContext)

	obj, err := lw.ListWithContext(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	list := obj.(*slimNodeList)
	if len(list.Items) != 3 || list.ResourceVersion == "" {
		t.Fatalf("list: %d items, resourceVersion %q", len(list.Items), list.ResourceVersion)
	}
	full, err := c.admin.CoreV1().Nodes().Get(ctx, benchNodeName(1), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := list.Items[1]
	if got.Name != full.Name || got.UID != full.UID || got.Spec.PodCIDR != full.Spec.PodCIDR ||
		!maps.Equal(got.Annotations, full.Annotations) || got.Labels != nil || got.ManagedFields != nil {
		t.Errorf("listed node %+v\nwant the metadata and spec of %+v, without labels and managed fields", got, full.ObjectMeta)
	}

	w, err := lw.WatchWithContext(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	next := func() watch.Event {
		t.Helper()
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatal("watch closed")
			}
			return ev
		case <-time.After(30 * time.Second):
			t.Fatal("no watch event")
			return watch.Event{}
		}
	}
	createNode(t, c.admin, "watched", []string{"10.9.0.0/24"}, map[string]string{"overlayd.io/public-ip": "198.18.9.9"})
	if ev := next(); ev.Type != watch.Added || ev.Object.(*slimNode).Name != "watched" || ev.Object.(*slimNode).Spec.PodCIDR != "10.9.0.0/24" {
		t.Errorf("event %s %+v, want ADDED watched", ev.Type, ev.Object)
	}
	patchAnnotations(t, c, "watched", map[string]string{"overlayd.io/public-ip": "198.18.9.10"})
	if ev := next(); ev.Type != watch.Modified || ev.Object.(*slimNode).Annotations["overlayd.io/public-ip"] != "198.18.9.10" {
		t.Errorf("event %s %+v, want MODIFIED with the new annotation", ev.Type, ev.Object)
	}
	if err := c.admin.CoreV1().Nodes().Delete(ctx, "watched", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev.Type != watch.Deleted || ev.Object.(*slimNode).Name != "watched" {
		t.Errorf("event %s %+v, want DELETED watched", ev.Type, ev.Object)
	}

	// A watch the server refuses is an API error, as with client-go's own watch.
	_, err = lw.WatchWithContext(ctx, metav1.ListOptions{FieldSelector: "no.such.field=x"})
	if !apierrors.IsBadRequest(err) {
		t.Errorf("watch with a bad field selector: %v, want a bad request", err)
	}
}

func TestDecodeWatchEventRefusesGarbage(t *testing.T) {
	for name, frame := range map[string][]byte{
		"truncated":   {0x0a, 0x05, 'A'},
		"no type":     {0x12, 0x00},
		"not k8s":     append([]byte{0x0a, 0x05}, append([]byte("ADDED"), 0x12, 0x04, 0x0a, 0x02, '{', '}')...),
		"other kinds": append([]byte{0x0a, 0x05}, append([]byte("ADDED"), 0x12, 0x0e, 0x0a, 0x0c, 0x6b, 0x38, 0x73, 0x00, 0x0a, 0x06, 0x12, 0x04, 'P', 'o', 'd', 's')...),
	} {
		if _, err := decodeWatchEvent(frame); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}
