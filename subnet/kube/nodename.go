package kube

import (
	"context"
	"errors"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// NodeName is the name of the node this agent runs on, as flanneld finds
// it: NODE_NAME, else the node of the pod POD_NAMESPACE/POD_NAME, asked
// of the API server. getenv is os.Getenv but in tests.
func NodeName(ctx context.Context, client kubernetes.Interface, getenv func(string) string) (string, error) {
	if n := getenv("NODE_NAME"); n != "" {
		return n, nil
	}
	pod, ns := getenv("POD_NAME"), getenv("POD_NAMESPACE")
	if pod == "" || ns == "" {
		return "", errors.New("cannot tell which node this is: set NODE_NAME (from the downward API spec.nodeName), or POD_NAME and POD_NAMESPACE")
	}
	p, err := client.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("looking up the node of pod %s/%s: %w", ns, pod, err)
	}
	if p.Spec.NodeName == "" {
		return "", fmt.Errorf("pod %s/%s has no node yet", ns, pod)
	}
	return p.Spec.NodeName, nil
}
