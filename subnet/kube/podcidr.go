package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/informers/internalinterfaces"
	"k8s.io/client-go/tools/cache"

	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/subnet"
)

// podCIDRMode takes the lease from Node.spec.podCIDR(s) and publishes the
// attributes as annotations on the own Node.
type podCIDRMode struct {
	m *manager
	// Guarded by m.ownMu once acquired.
	lease       subnet.Lease
	repairAfter time.Time
}

func (p *podCIDRMode) newInformer() cache.SharedIndexInformer {
	var inf cache.SharedIndexInformer
	if lw := slimNodeListWatch(p.m.cfg.Client); lw != nil {
		inf = cache.NewSharedIndexInformerWithOptions(lw, &slimNode{}, cache.SharedIndexInformerOptions{ObjectDescription: "nodes"})
	} else {
		inf = coreinformers.NewNodeInformerWithOptions(p.m.cfg.Client, internalinterfaces.InformerOptions{})
	}
	// Only fails once the informer runs, and it has not started yet.
	_ = inf.SetTransform(p.toStored)
	return inf
}

// toStored reduces a Node to its record, which is all the informer keeps
// (a few hundred bytes of a Node's tens of kilobytes). Idempotent, as the
// informer requires.
func (p *podCIDRMode) toStored(obj any) (any, error) {
	switch n := obj.(type) {
	case *corev1.Node:
		return p.nodeRecord(&n.ObjectMeta, &n.Spec), nil
	case *slimNode:
		return p.nodeRecord(&n.ObjectMeta, &n.Spec), nil
	}
	return obj, nil
}

func (p *podCIDRMode) toRecord(obj any) *record {
	r, _ := obj.(*record)
	return r
}

func (p *podCIDRMode) nodeRecord(meta *metav1.ObjectMeta, spec *corev1.NodeSpec) *record {
	net := p.m.net
	r := &record{ObjectMeta: emptyObjectMeta, key: meta.Name, name: meta.Name, node: meta.Name, created: meta.CreationTimestamp.Time}
	var sp problem
	if r.v4, r.v6, sp = podCIDRs(net, spec); !sp.ok() {
		r.subnetP = &sp
	}
	r.attrs, r.attrsP = p.m.keys.decodeRecord(net, meta.Annotations)
	if meta.Name == p.m.cfg.NodeName {
		r.ours = p.m.keys.only(meta.Annotations) // to see what this agent published
	}
	return r
}

// podCIDRs returns the node's pod subnets of the enabled families.
func podCIDRs(net *netconf.Config, spec *corev1.NodeSpec) (v4, v6 netip.Prefix, p problem) {
	cidrs := spec.PodCIDRs
	if len(cidrs) == 0 && spec.PodCIDR != "" {
		cidrs = []string{spec.PodCIDR}
	}
	if len(cidrs) == 0 {
		return v4, v6, problem{reason: reasonMissingSubnet, detail: "spec.podCIDR is not assigned yet"}
	}
	for _, s := range cidrs {
		c, err := netip.ParsePrefix(s)
		if err != nil || c.Masked() != c || c.Addr().Is4In6() {
			return netip.Prefix{}, netip.Prefix{}, problem{reason: reasonMalformedSubnet, detail: fmt.Sprintf("spec.podCIDRs entry %q is not a canonical CIDR", s)}
		}
		switch {
		case c.Addr().Is4() && net.EnableIPv4:
			v4 = c
		case c.Addr().Is6() && net.EnableIPv6:
			v6 = c
		}
	}
	if !v4.IsValid() && !v6.IsValid() {
		return v4, v6, problem{reason: reasonMissingSubnet, detail: fmt.Sprintf("spec.podCIDRs %v has no subnet of an enabled address family", cidrs)}
	}
	return v4, v6, problem{}
}

// permissions: the annotations are written through the status subresource
// (the API server lets it change a Node's metadata, not its spec), as
// flanneld does; so the agent needs no right to patch Nodes, which would
// let it change any Node's taints or podCIDR.
func (p *podCIDRMode) permissions() []permission {
	perms := []permission{
		{verb: "list", resource: "nodes"},
		{verb: "watch", resource: "nodes"},
		{verb: "patch", resource: "nodes", subresource: "status", name: p.m.cfg.NodeName},
	}
	return append(perms, eventPermissions()...)
}

// acquire waits for the own Node and its podCIDR, refuses a podCIDR another
// node holds or that lies outside Network, then publishes the annotations.
func (p *podCIDRMode) acquire(ctx context.Context, attrs subnet.LeaseAttrs) (subnet.Lease, error) {
	m := p.m
	self := m.cfg.NodeName
	wait := waitLogger{log: m.log.With(zap.String("node", self))}
	var own *record
	for {
		res, wake := m.state()
		own = m.record(self)
		switch {
		case own == nil:
			wait.say("waiting for the Node object of this node to be registered")
		case own.subnetProblem().reason == reasonMissingSubnet:
			wait.say("waiting for kube-controller-manager to assign spec.podCIDR to this node (it needs --allocate-node-cidrs and a --cluster-cidr covering Network)",
				zap.String("detail", own.subnetProblem().detail), zap.Stringer("network", m.net.Network))
		case !own.subnetProblem().ok():
			return subnet.Lease{}, p.refuse(own, own.subnetProblem())
		case res.ownProblem.reason == reasonMissingSubnet:
			wait.say("waiting for the node's podCIDR of every enabled address family", zap.String("detail", res.ownProblem.detail))
		case !res.ownProblem.ok():
			return subnet.Lease{}, p.refuse(own, res.ownProblem)
		default:
			lease := subnet.Lease{Node: self, Subnet: own.v4, IPv6Subnet: own.v6, Attrs: attrs}
			if err := p.patchAnnotations(ctx, attrs); err != nil {
				return subnet.Lease{}, err
			}
			m.ownMu.Lock()
			p.lease = lease
			p.wrote()
			m.ownMu.Unlock()
			return lease, nil
		}
		select {
		case <-wake:
		case <-time.After(time.Minute): // re-log while waiting
		case <-m.failed:
			return subnet.Lease{}, m.failure()
		case <-ctx.Done():
			return subnet.Lease{}, fmt.Errorf("acquiring the lease of node %s: %w", self, ctx.Err())
		}
	}
}

// refuse explains why this node may not run with its podCIDR, on the Node
// as an Event too, where an administrator looks.
func (p *podCIDRMode) refuse(own *record, prob problem) error {
	err := fmt.Errorf("node %s may not use its podCIDR: %s: %s", own.node, prob.reason, prob.detail)
	p.m.log.Error("refusing to run", zap.Error(err))
	p.m.cfg.Events.Warning("SubnetConflict", "overlayd refuses to run: %s", prob.detail)
	return err
}

// patchAnnotations writes the annotations peers read, if the Node's differ.
func (p *podCIDRMode) patchAnnotations(ctx context.Context, attrs subnet.LeaseAttrs) error {
	m := p.m
	want := m.keys.encode(m.net, attrs)
	if p.published(want) {
		return nil
	}
	values := map[string]any{}
	for k, v := range want {
		values[k] = v
	}
	for _, k := range m.keys.optional() {
		if _, ok := want[k]; !ok {
			values[k] = nil // a merge patch removes it
		}
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": values}})
	if err != nil {
		return err
	}
	if _, err := m.cfg.Client.CoreV1().Nodes().Patch(ctx, m.cfg.NodeName, types.MergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		return fmt.Errorf("publishing lease annotations on node %s: %w", m.cfg.NodeName, err)
	}
	return nil
}

// published reports whether the cached own Node carries the annotations.
func (p *podCIDRMode) published(want map[string]string) bool {
	own := p.m.record(p.m.cfg.NodeName)
	if own == nil {
		return false
	}
	have := own.ours
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	for _, k := range p.m.keys.optional() {
		if _, ok := have[k]; ok && want[k] == "" {
			return false
		}
	}
	return true
}

func (p *podCIDRMode) publish(ctx context.Context, attrs subnet.LeaseAttrs) error {
	if err := p.patchAnnotations(ctx, attrs); err != nil {
		return err
	}
	p.lease.Attrs = attrs
	p.wrote()
	return nil
}

// wrote holds back maintain's repair for a second after this agent wrote
// its annotations: the informer's copy of the own Node may not show the
// write yet, and "repairing" it would be one more API request per node
// start. Called with ownMu held.
func (p *podCIDRMode) wrote() {
	p.repairAfter = time.Now().Add(time.Second)
}

// maintain notices a changed podCIDR (the Node was deleted and registered
// again with another one: the daemon must restart) and puts back annotations
// that went missing, e.g. on a re-registered Node.
func (p *podCIDRMode) maintain(ctx context.Context) (time.Duration, error) {
	m := p.m
	m.ownMu.Lock()
	defer m.ownMu.Unlock()
	own := m.record(m.cfg.NodeName)
	if own == nil || !own.subnetProblem().ok() {
		return time.Hour, nil // gone or waiting for a podCIDR again; its return is another change
	}
	if own.v4 != p.lease.Subnet || own.v6 != p.lease.IPv6Subnet {
		return 0, fmt.Errorf("the podCIDR of node %s changed from %s %s to %s %s; restart to take the new lease",
			m.cfg.NodeName, p.lease.Subnet, p.lease.IPv6Subnet, own.v4, own.v6)
	}
	if p.published(m.keys.encode(m.net, m.attrs)) {
		return time.Hour, nil
	}
	if time.Now().Before(p.repairAfter) {
		return time.Until(p.repairAfter), nil
	}
	m.log.Info("the node's lease annotations differ from what this agent published; writing them again")
	if err := p.patchAnnotations(ctx, m.attrs); err != nil {
		m.log.Warn("repairing lease annotations failed; retrying", zap.Error(err))
		p.repairAfter = time.Now().Add(10 * time.Second)
		return 10 * time.Second, nil
	}
	p.wrote() // and at most once a second, whatever else writes them
	return time.Hour, nil
}
