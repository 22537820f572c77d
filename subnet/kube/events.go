package kube

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	eventrecord "k8s.io/client-go/tools/record"
)

// Events records Kubernetes Events on Node objects, where an operator looks
// (`kubectl describe node`, `kubectl get events`), as this node's agent: on
// its own Node, and a Warning on another node (one claiming this node's
// subnet). One recorder serves the daemon and the lease store. Repeated
// events are aggregated by client-go's recorder, so callers may record on
// every occurrence. It needs create/patch on events in "default" (see
// Documentation/rbac.yml). A nil *Events records nothing.
type Events struct {
	recorder eventrecord.EventRecorder
	node     string
}

// NewEvents starts the event recorder of the agent on node; it stops with ctx.
func NewEvents(ctx context.Context, client kubernetes.Interface, node string) *Events {
	broadcaster := eventrecord.NewBroadcaster(eventrecord.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return &Events{
		recorder: broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "overlayd", Host: node}),
		node:     node,
	}
}

// Normal records an informational event on the own Node.
func (e *Events) Normal(reason, format string, args ...any) {
	if e != nil {
		e.record(e.node, corev1.EventTypeNormal, reason, format, args...)
	}
}

// Warning records an event on the own Node that needs an operator's attention.
func (e *Events) Warning(reason, format string, args ...any) {
	if e != nil {
		e.record(e.node, corev1.EventTypeWarning, reason, format, args...)
	}
}

// WarningOn records a Warning on another node's Node.
func (e *Events) WarningOn(node, reason, format string, args ...any) {
	if e != nil {
		e.record(node, corev1.EventTypeWarning, reason, format, args...)
	}
}

func (e *Events) record(node, eventType, reason, format string, args ...any) {
	// The node's name as its UID, as the kubelet records Node events:
	// kubectl describe node shows them, and records need not keep UIDs.
	ref := &corev1.ObjectReference{APIVersion: "v1", Kind: "Node", Name: node, UID: types.UID(node)}
	e.recorder.Eventf(ref, eventType, reason, format, args...)
}
