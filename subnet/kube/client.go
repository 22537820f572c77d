package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/overlayd/overlayd/pkg/version"
)

// Client rate limits: the agent makes a handful of requests at start and
// almost none afterwards; the limits only bound a misbehaving loop.
const (
	clientQPS   = 20
	clientBurst = 40
)

// NewClientConfig builds the API client configuration with flanneld's
// --kubeconfig-file / --kube-api-url semantics: in-cluster when both are
// empty, else the kubeconfig file, with apiURL overriding its server. It
// speaks protobuf.
func NewClientConfig(kubeconfigFile, apiURL string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if kubeconfigFile == "" && apiURL == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster API config (set --kubeconfig-file or --kube-api-url outside a pod): %w", err)
		}
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags(apiURL, kubeconfigFile)
		if err != nil {
			return nil, fmt.Errorf("API config from kubeconfig %q, server %q: %w", kubeconfigFile, apiURL, err)
		}
	}
	cfg = UseProtobuf(cfg)
	cfg.QPS, cfg.Burst = clientQPS, clientBurst
	cfg.UserAgent = "overlayd/" + version.Version
	return cfg, nil
}

// UseProtobuf returns a copy of cfg that sends and prefers protobuf, the
// API server's cheapest encoding for built-in types.
func UseProtobuf(cfg *rest.Config) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.ContentType = runtime.ContentTypeProtobuf
	c.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	return c
}

// NewClient is kubernetes.NewForConfig with the error wrapped.
func NewClient(cfg *rest.Config) (kubernetes.Interface, error) {
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating API client: %w", err)
	}
	return c, nil
}

// setNetworkAvailable sets the Node's NetworkUnavailable condition to False,
// telling the scheduler and the node lifecycle controller that pod
// networking is up (a strategic merge on conditions, keyed by type).
func setNetworkAvailable(ctx context.Context, client kubernetes.Interface, node string) error {
	now := metav1.NewTime(time.Now())
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{{
		Type:               corev1.NodeNetworkUnavailable,
		Status:             corev1.ConditionFalse,
		Reason:             "OverlaydIsUp",
		Message:            "overlayd is running on this node",
		LastTransitionTime: now,
		LastHeartbeatTime:  now,
	}}}})
	if err != nil {
		return err
	}
	if _, err := client.CoreV1().Nodes().PatchStatus(ctx, node, patch); err != nil {
		return fmt.Errorf("setting condition NetworkUnavailable=False on node %s: %w", node, err)
	}
	return nil
}
