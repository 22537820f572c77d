package kube

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/overlayd/overlayd/subnet"
)

// ownNodeWatch watches this node's own Node in lease mode, whose informer
// watches Leases: an administrator annotates the Node with its public
// addresses (node-public-ip, public-ip-overwrite), as for flanneld. In
// podCIDR mode the Nodes informer has the own Node already.
type ownNodeWatch struct {
	informer cache.SharedIndexInformer
	reg      cache.ResourceEventHandlerRegistration
}

func newOwnNodeWatch(m *manager) (*ownNodeWatch, error) {
	sel := fields.OneTermEqualSelector("metadata.name", m.cfg.NodeName).String()
	nodes := m.cfg.Client.CoreV1().Nodes()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			return nodes.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			return nodes.Watch(ctx, o)
		},
	}
	inf := cache.NewSharedIndexInformerWithOptions(lw, &corev1.Node{}, cache.SharedIndexInformerOptions{ObjectDescription: "own node"})
	// Keep only the name and the annotations under the prefix.
	_ = inf.SetTransform(func(obj any) (any, error) {
		n, ok := obj.(*corev1.Node)
		if !ok {
			return obj, nil
		}
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, ResourceVersion: n.ResourceVersion, Annotations: m.keys.only(n.Annotations)}}, nil
	})
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { m.markDirty() },
		UpdateFunc: func(any, any) { m.markDirty() },
		DeleteFunc: func(any) { m.markDirty() },
	})
	if err != nil {
		return nil, err
	}
	return &ownNodeWatch{informer: inf, reg: reg}, nil
}

// annotations are the own Node's annotations under the prefix.
func (w *ownNodeWatch) annotations(node string) map[string]string {
	obj, ok, _ := w.informer.GetStore().GetByKey(node)
	if !ok {
		return nil
	}
	return obj.(*corev1.Node).Annotations
}

// ownAnnotations are the own Node's annotations under the prefix, from
// whichever informer has the Node.
func (m *manager) ownAnnotations() map[string]string {
	if m.self != nil {
		return m.self.annotations(m.cfg.NodeName)
	}
	if r := m.record(m.cfg.NodeName); r != nil {
		return r.ours
	}
	return nil
}

// NodeAddresses implements subnet.Manager.
func (m *manager) NodeAddresses() (subnet.NodeAddresses, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.res.node, m.synced
}
