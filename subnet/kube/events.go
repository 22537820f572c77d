package kube

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	eventrecord "k8s.io/client-go/tools/record"
)

// NodeEvents records Kubernetes Events on this node's Node object, where an
// operator looks (`kubectl describe node`, `kubectl get events`). Repeated
// events are aggregated by client-go's recorder, so callers may record on
// every occurrence. It needs create/patch on events in "default" (see
// Documentation/rbac.yml).
type NodeEvents struct {
	recorder eventrecord.EventRecorder
	ref      *corev1.ObjectReference
}

// NewNodeEvents starts an event recorder for node; it stops with ctx.
func NewNodeEvents(ctx context.Context, client kubernetes.Interface, node string) *NodeEvents {
	broadcaster := eventrecord.NewBroadcaster(eventrecord.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	go func() {
		<-ctx.Done()
		broadcaster.Shutdown()
	}()
	return &NodeEvents{
		recorder: broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "overlayd", Host: node}),
		// The node's name as its UID, as the kubelet records Node events.
		ref: &corev1.ObjectReference{APIVersion: "v1", Kind: "Node", Name: node, UID: types.UID(node)},
	}
}

// Normal records an informational event.
func (e *NodeEvents) Normal(reason, format string, args ...any) {
	e.recorder.Event(e.ref, corev1.EventTypeNormal, reason, fmt.Sprintf(format, args...))
}

// Warning records an event that needs an operator's attention.
func (e *NodeEvents) Warning(reason, format string, args ...any) {
	e.recorder.Event(e.ref, corev1.EventTypeWarning, reason, fmt.Sprintf(format, args...))
}
