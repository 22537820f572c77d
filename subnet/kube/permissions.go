package kube

import (
	"context"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// permission is one RBAC grant the agent needs.
type permission struct {
	verb, group, resource, subresource, namespace, name string
}

func (p permission) String() string {
	res := p.resource
	if p.group != "" {
		res += "." + p.group
	}
	if p.subresource != "" {
		res += "/" + p.subresource
	}
	s := p.verb + " " + res
	if p.name != "" {
		s += fmt.Sprintf(" %q", p.name)
	}
	if p.namespace != "" {
		s += " in namespace " + p.namespace
	}
	return s
}

// eventPermissions are needed to record Events on Nodes, which live in the
// "default" namespace.
func eventPermissions() []permission {
	return []permission{
		{verb: "create", resource: "events", namespace: metav1.NamespaceDefault},
		{verb: "patch", resource: "events", namespace: metav1.NamespaceDefault},
	}
}

// checkPermissions asks the API server whether the agent holds every
// permission its mode needs, and names all that are missing at once, so a
// wrong ClusterRole fails at start with a clear message instead of as
// retried watch errors.
func checkPermissions(ctx context.Context, log *zap.Logger, client kubernetes.Interface, mode string, perms []permission) error {
	var denied []string
	for _, p := range perms {
		review := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: p.verb, Group: p.group, Resource: p.resource, Subresource: p.subresource,
				Namespace: p.namespace, Name: p.name,
			},
		}}
		got, err := createWithRetry(ctx, log, func() (*authorizationv1.SelfSubjectAccessReview, error) {
			return client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
		})
		if err != nil {
			return fmt.Errorf("checking RBAC permission to %s: %w", p, err)
		}
		if !got.Status.Allowed {
			denied = append(denied, p.String())
		}
	}
	if len(denied) == 0 {
		return nil
	}
	return fmt.Errorf("RBAC: %s is forbidden to %s; overlayd needs these in %s lease mode (see Documentation/rbac.md)",
		whoAmI(ctx, client), strings.Join(denied, ", "), mode)
}

// createWithRetry retries a request while the API server is unreachable
// (an agent may start before it), with growing pauses up to 30s; an answer,
// even a refusal, ends it.
func createWithRetry[T any](ctx context.Context, log *zap.Logger, create func() (T, error)) (T, error) {
	delay := 500 * time.Millisecond
	for {
		got, err := create()
		if err == nil || apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) || apierrors.IsBadRequest(err) || ctx.Err() != nil {
			return got, err
		}
		log.Warn("the API server did not answer; retrying", zap.Duration("in", delay), zap.Error(err))
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return got, err
		}
		delay = min(2*delay, 30*time.Second)
	}
}

// whoAmI names the authenticated user for error messages.
func whoAmI(ctx context.Context, client kubernetes.Interface) string {
	r, err := client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil || r.Status.UserInfo.Username == "" {
		return "this agent's identity"
	}
	return fmt.Sprintf("user %q", r.Status.UserInfo.Username)
}
