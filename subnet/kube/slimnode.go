package kube

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// Kubernetes has no field projection: a watch on Nodes carries whole Nodes,
// and most of a Node's bytes are status (images, conditions) and managed
// fields. slimNode is a Node decoded without them: the protobuf fields are
// skipped in the wire bytes, before anything is allocated, so decoding the
// initial list of thousands of Nodes costs a fraction of the full decode
// and leaves little garbage. The informer's transform then keeps even less.

// slimNode is a Node without status, and metadata without labels, owner
// references, finalizers and managed fields.
type slimNode struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              corev1.NodeSpec `json:"spec,omitempty"`
}

type slimNodeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []slimNode `json:"items"`
}

// Protobuf field numbers (k8s.io/api/core/v1 and apimachinery meta/v1 generated.proto).
const (
	fieldNodeMetadata = 1
	fieldNodeSpec     = 2
	fieldListMetadata = 1
	fieldListItems    = 2
)

// metadataFieldsSkipped are ObjectMeta's labels, ownerReferences,
// finalizers and managedFields.
var metadataFieldsSkipped = map[protowire.Number]bool{11: true, 13: true, 14: true, 17: true}

// Reset and Unmarshal make slimNode decodable by the protobuf serializer.
func (n *slimNode) Reset() { *n = slimNode{} }

func (n *slimNode) Unmarshal(data []byte) error {
	return eachMessageField(data, func(num protowire.Number, value []byte) error {
		switch num {
		case fieldNodeMetadata:
			return unmarshalMetadata(&n.ObjectMeta, value)
		case fieldNodeSpec:
			return n.Spec.Unmarshal(value)
		}
		return nil
	})
}

func (n *slimNode) DeepCopyObject() runtime.Object {
	c := &slimNode{TypeMeta: n.TypeMeta}
	n.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	n.Spec.DeepCopyInto(&c.Spec)
	return c
}

func (l *slimNodeList) Reset() { *l = slimNodeList{} }

func (l *slimNodeList) Unmarshal(data []byte) error {
	return eachMessageField(data, func(num protowire.Number, value []byte) error {
		switch num {
		case fieldListMetadata:
			return l.ListMeta.Unmarshal(value)
		case fieldListItems:
			l.Items = append(l.Items, slimNode{})
			return l.Items[len(l.Items)-1].Unmarshal(value)
		}
		return nil
	})
}

func (l *slimNodeList) DeepCopyObject() runtime.Object {
	c := &slimNodeList{TypeMeta: l.TypeMeta}
	l.ListMeta.DeepCopyInto(&c.ListMeta)
	c.Items = make([]slimNode, len(l.Items))
	for i := range l.Items {
		c.Items[i] = *l.Items[i].DeepCopyObject().(*slimNode)
	}
	return c
}

// eachMessageField calls fn with the value of every length-delimited field
// of a protobuf message; other wire types are skipped.
func eachMessageField(b []byte, fn func(num protowire.Number, value []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("decoding Node: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if typ != protowire.BytesType {
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return fmt.Errorf("decoding Node: %w", protowire.ParseError(m))
			}
			b = b[m:]
			continue
		}
		v, m := protowire.ConsumeBytes(b)
		if m < 0 {
			return fmt.Errorf("decoding Node: %w", protowire.ParseError(m))
		}
		if err := fn(num, v); err != nil {
			return err
		}
		b = b[m:]
	}
	return nil
}

// unmarshalMetadata decodes ObjectMeta without the skipped fields. The
// generated Unmarshal merges field by field, so each kept field is decoded
// straight from the wire bytes, without copying the rest.
func unmarshalMetadata(meta *metav1.ObjectMeta, b []byte) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("decoding Node metadata: %w", protowire.ParseError(n))
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return fmt.Errorf("decoding Node metadata: %w", protowire.ParseError(m))
		}
		if !metadataFieldsSkipped[num] {
			if err := meta.Unmarshal(b[:n+m]); err != nil {
				return err
			}
		}
		b = b[n+m:]
	}
	return nil
}

var slimCodecs = func() serializer.CodecFactory {
	s := runtime.NewScheme()
	gv := corev1.SchemeGroupVersion
	s.AddKnownTypeWithName(gv.WithKind("Node"), &slimNode{})
	s.AddKnownTypeWithName(gv.WithKind("NodeList"), &slimNodeList{})
	metav1.AddToGroupVersion(s, gv) // watch events, status, list options
	return serializer.NewCodecFactory(s)
}()

// slimNodeListWatch lists and watches Nodes as slimNodes over the HTTP
// client (transport, credentials, rate limiter) of the given clientset.
// It returns nil when client is not a REST clientset (e.g. a fake).
func slimNodeListWatch(client kubernetes.Interface) cache.ListerWatcher {
	rc, ok := client.CoreV1().RESTClient().(*rest.RESTClient)
	if !ok || rc == nil || rc.Client == nil {
		return nil
	}
	// The clientset's URL for the core group is <base>/api/v1.
	u := rc.Get().URL()
	base := &url.URL{Scheme: u.Scheme, Host: u.Host, Path: strings.TrimSuffix(u.Path, "/api/v1")}
	gv := corev1.SchemeGroupVersion
	nodes, err := rest.NewRESTClient(base, "/api/v1", rest.ClientContentConfig{
		AcceptContentTypes: runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON,
		ContentType:        runtime.ContentTypeProtobuf,
		GroupVersion:       gv,
		Negotiator:         runtime.NewClientNegotiator(slimCodecs.WithoutConversion(), gv),
	}, rc.GetRateLimiter(), rc.Client)
	if err != nil {
		return nil
	}
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			list := &slimNodeList{}
			err := nodes.Get().Resource("nodes").VersionedParams(&opts, metav1.ParameterCodec).Do(ctx).Into(list)
			return list, err
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			opts.Watch = true
			req := nodes.Get().Resource("nodes").VersionedParams(&opts, metav1.ParameterCodec).
				SetHeader("Accept", runtime.ContentTypeProtobuf+";stream=watch")
			if opts.TimeoutSeconds != nil {
				req = req.Timeout(time.Duration(*opts.TimeoutSeconds) * time.Second)
			}
			body, err := req.Stream(ctx)
			if err != nil {
				return nil, err
			}
			return newSlimWatch(body), nil
		},
	}
}

// slimWatch decodes a protobuf watch stream of Nodes in place: each frame
// is read into one reused buffer and the Node decoded from it as a
// slimNode, where client-go's decoder copies every event twice (the event's
// object, then the object's envelope) before decoding all of it.
type slimWatch struct {
	body   io.ReadCloser
	result chan watch.Event
	done   chan struct{}
	stop   sync.Once
}

// maxWatchFrame bounds one event: a Node is tens of kilobytes.
const maxWatchFrame = 16 << 20

func newSlimWatch(body io.ReadCloser) *slimWatch {
	w := &slimWatch{body: body, result: make(chan watch.Event), done: make(chan struct{})}
	go w.run()
	return w
}

func (w *slimWatch) ResultChan() <-chan watch.Event { return w.result }

func (w *slimWatch) Stop() {
	w.stop.Do(func() {
		close(w.done)
		w.body.Close()
	})
}

func (w *slimWatch) run() {
	defer close(w.result)
	defer w.body.Close()
	r := bufio.NewReaderSize(w.body, 64<<10)
	var size [4]byte
	var frame []byte
	for {
		// Frames are a 4-byte big-endian length and the WatchEvent.
		if _, err := io.ReadFull(r, size[:]); err != nil {
			return // the server ended the watch, or Stop
		}
		n := binary.BigEndian.Uint32(size[:])
		if n > maxWatchFrame {
			w.fail(fmt.Errorf("watch event of %d bytes exceeds %d", n, maxWatchFrame))
			return
		}
		frame = slices.Grow(frame[:0], int(n))[:n]
		if _, err := io.ReadFull(r, frame); err != nil {
			return
		}
		ev, err := decodeWatchEvent(frame)
		if err != nil {
			w.fail(err)
			return
		}
		select {
		case w.result <- ev:
		case <-w.done:
			return
		}
	}
}

// fail reports a broken stream the way client-go's watcher does: an Error
// event, after which the reflector starts a new watch.
func (w *slimWatch) fail(err error) {
	status := apierrors.NewInternalError(fmt.Errorf("decoding the Node watch stream: %w", err)).Status()
	select {
	case w.result <- watch.Event{Type: watch.Error, Object: &status}:
	case <-w.done:
	}
}

// protobufMagic starts every object the API server encodes as protobuf.
var protobufMagic = []byte{0x6b, 0x38, 0x73, 0x00}

// decodeWatchEvent decodes a metav1.WatchEvent (type = 1, object = 2, a
// RawExtension whose raw = 1) holding a Node or a Status, each wrapped in
// the runtime.Unknown envelope (typeMeta = 1 with kind = 2, raw = 2).
func decodeWatchEvent(frame []byte) (watch.Event, error) {
	var ev watch.Event
	var object []byte
	err := eachMessageField(frame, func(num protowire.Number, v []byte) error {
		switch num {
		case 1:
			ev.Type = eventType(v)
		case 2:
			return eachMessageField(v, func(num protowire.Number, raw []byte) error {
				if num == 1 {
					object = raw
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return ev, err
	}
	if ev.Type == "" {
		return ev, fmt.Errorf("watch event of unknown type")
	}
	if !bytes.HasPrefix(object, protobufMagic) {
		return ev, fmt.Errorf("watch event object is not protobuf-encoded")
	}
	var kind, raw []byte
	err = eachMessageField(object[len(protobufMagic):], func(num protowire.Number, v []byte) error {
		switch num {
		case 1:
			return eachMessageField(v, func(num protowire.Number, k []byte) error {
				if num == 2 {
					kind = k
				}
				return nil
			})
		case 2:
			raw = v
		}
		return nil
	})
	if err != nil {
		return ev, err
	}
	switch string(kind) {
	case "Node":
		n := &slimNode{}
		if err := n.Unmarshal(raw); err != nil {
			return ev, err
		}
		n.APIVersion, n.Kind = "v1", "Node"
		ev.Object = n
	case "Status":
		st := &metav1.Status{}
		if err := st.Unmarshal(raw); err != nil {
			return ev, err
		}
		ev.Object = st
	default:
		return ev, fmt.Errorf("unexpected %q in the Node watch stream", kind)
	}
	return ev, nil
}

// eventType maps the wire's event type to the constant without allocating.
func eventType(b []byte) watch.EventType {
	for _, t := range []watch.EventType{watch.Added, watch.Modified, watch.Deleted, watch.Bookmark, watch.Error} {
		if string(b) == string(t) {
			return t
		}
	}
	return ""
}
