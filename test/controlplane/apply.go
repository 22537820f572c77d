package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
)

// ApplyOptions tune Apply.
type ApplyOptions struct {
	DryRun bool // server-side dry run: validated and admitted, not stored
}

// Apply applies every object of a multi-document YAML manifest with
// server-side apply, as `kubectl apply --server-side` does, and returns the
// objects as the API server answered. Any object the server refuses is an
// error naming it.
func (cp *ControlPlane) Apply(ctx context.Context, identity string, manifest []byte, opts ApplyOptions) ([]*unstructured.Unstructured, error) {
	cfg := cp.Config(identity)
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	objs, err := DecodeManifest(manifest)
	if err != nil {
		return nil, err
	}
	var out []*unstructured.Unstructured
	for _, obj := range objs {
		gvk := obj.GroupVersionKind()
		name := fmt.Sprintf("%s %s/%s", gvk.Kind, obj.GetNamespace(), obj.GetName())
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return out, fmt.Errorf("%s: %w", name, err)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
		if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
			ns := obj.GetNamespace()
			if ns == "" {
				ns = metav1.NamespaceDefault
			}
			ri = dyn.Resource(mapping.Resource).Namespace(ns)
		}
		data, err := obj.MarshalJSON()
		if err != nil {
			return out, fmt.Errorf("%s: %w", name, err)
		}
		po := metav1.PatchOptions{FieldManager: "overlayd-tests", Force: ptrTo(true)}
		if opts.DryRun {
			po.DryRun = []string{metav1.DryRunAll}
		}
		res, err := ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, po)
		if err != nil {
			return out, fmt.Errorf("%s: %w", name, err)
		}
		out = append(out, res)
	}
	return out, nil
}

// DecodeManifest splits a multi-document YAML manifest into objects,
// skipping empty documents.
func DecodeManifest(manifest []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifest), 4096)
	var objs []*unstructured.Unstructured
	for i := 1; ; i++ {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return objs, nil
			}
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if len(m) == 0 {
			continue
		}
		obj := &unstructured.Unstructured{Object: m}
		if obj.GetKind() == "" || obj.GetAPIVersion() == "" {
			return nil, fmt.Errorf("document %d: no kind or apiVersion", i)
		}
		objs = append(objs, obj)
	}
}

func ptrTo[T any](v T) *T { return &v }
