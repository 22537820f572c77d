package kube

import (
	"fmt"
	"net/netip"
	"time"

	coordv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinformers "k8s.io/client-go/informers/coordination/v1"
	"k8s.io/client-go/informers/internalinterfaces"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/overlayd/overlayd/pkg/ip"
)

// Lease mode: one coordination.k8s.io/v1 Lease per subnet, named after it,
// in one namespace. Creating the Lease is the lock (names are unique), the
// holder renews it, an expired one is taken over by a resourceVersion-guarded
// update (only one taker wins), and its owner reference to the holder's Node
// lets the garbage collector remove it with the Node. The allocator
// (allocator.go) decides; leaseacquire.go and leaserenew.go write.

const (
	familyIPv4 = "ipv4"
	familyIPv6 = "ipv6"
)

type leaseMode struct {
	m       *manager
	own     map[string]*ownLease // by family; guarded by m.ownMu
	nodeRef metav1.OwnerReference
}

// ownLease is a Lease this agent holds.
type ownLease struct {
	obj     *coordv1.Lease // as the API server last returned it
	subnet  netip.Prefix
	renewed time.Time
}

func (l *leaseMode) families() []addressFamily {
	n := l.m.net
	var fs []addressFamily
	if n.EnableIPv4 {
		fs = append(fs, addressFamily{familyIPv4, n.Network, n.SubnetLen, n.SubnetMin, n.SubnetMax})
	}
	if n.EnableIPv6 {
		fs = append(fs, addressFamily{familyIPv6, n.IPv6Network, n.IPv6SubnetLen, n.IPv6SubnetMin, n.IPv6SubnetMax})
	}
	return fs
}

// renewEvery is how often the own Leases are renewed: every third of their
// duration, so a short API outage costs nothing, and at the latest
// RenewMargin before they expire.
func (l *leaseMode) renewEvery() time.Duration {
	every := l.m.cfg.LeaseDuration / 3
	if m := l.m.cfg.RenewMargin; m > 0 {
		every = min(every, l.m.cfg.LeaseDuration-m)
	}
	return every
}

func (l *leaseMode) newInformer() cache.SharedIndexInformer {
	label := l.m.keys.leaseFamily
	inf := coordinformers.NewLeaseInformerWithOptions(l.m.cfg.Client, l.m.cfg.LeaseNamespace, internalinterfaces.InformerOptions{
		TweakListOptions: func(o *metav1.ListOptions) { o.LabelSelector = label },
	})
	// Only fails once the informer runs, and it has not started yet.
	_ = inf.SetTransform(l.toStored)
	return inf
}

// storedLease is what the informer keeps of a Lease: the Lease trimmed to
// what this agent needs to write it back, the subnet it stands for, and its
// record, parsed once here. Its metav1.Object is the Lease's metadata.
type storedLease struct {
	*metav1.ObjectMeta
	lease  *coordv1.Lease
	subnet netip.Prefix // invalid when the Lease is malformed
	rec    *record      // nil when released: it claims nothing
}

// toStored is the informer's transform. Idempotent, as the informer requires.
func (l *leaseMode) toStored(obj any) (any, error) {
	le, ok := obj.(*coordv1.Lease)
	if !ok {
		return obj, nil // a storedLease already, or a tombstone
	}
	le = l.trim(le)
	s := &storedLease{ObjectMeta: &le.ObjectMeta, lease: le}
	p, prob := l.subnetOf(le)
	if prob.ok() {
		s.subnet = p
	}
	s.rec = l.leaseRecord(le, p, prob)
	return s, nil
}

func (l *leaseMode) toRecord(obj any) *record {
	if s, ok := obj.(*storedLease); ok {
		return s.rec
	}
	return nil
}

// trim drops what peers do not need (managed fields, owner references,
// foreign labels and annotations).
func (l *leaseMode) trim(le *coordv1.Lease) *coordv1.Lease {
	var labels map[string]string
	if v, ok := le.Labels[l.m.keys.leaseFamily]; ok {
		labels = map[string]string{l.m.keys.leaseFamily: v}
	}
	return &coordv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Name:              le.Name,
			Namespace:         le.Namespace,
			UID:               le.UID,
			ResourceVersion:   le.ResourceVersion,
			CreationTimestamp: le.CreationTimestamp,
			Labels:            labels,
			Annotations:       l.m.keys.only(le.Annotations),
		},
		Spec: *le.Spec.DeepCopy(),
	}
}

// leaseRecord is a Lease's claim for resolve; nil for a released Lease.
func (l *leaseMode) leaseRecord(le *coordv1.Lease, p netip.Prefix, prob problem) *record {
	holder := ptr.Deref(le.Spec.HolderIdentity, "")
	if holder == "" {
		return nil // released: free to take, claims nothing
	}
	r := &record{key: le.Namespace + "/" + le.Name, name: le.Name, node: holder, created: le.CreationTimestamp.Time}
	switch {
	case !prob.ok():
		r.subnetP = &prob
	case p.Addr().Is4():
		r.v4 = p
	default:
		r.v6 = p
	}
	r.attrs, r.attrsP = l.m.keys.decodeRecord(l.m.net, le.Annotations)
	return r
}

// subnetOf reads the subnet a Lease stands for and checks that its name and
// family label agree, so that the name's uniqueness really locks the subnet.
func (l *leaseMode) subnetOf(le *coordv1.Lease) (netip.Prefix, problem) {
	k := l.m.keys
	s, ok := le.Annotations[k.subnet]
	if !ok {
		return netip.Prefix{}, problem{reason: reasonMalformedSubnet, detail: fmt.Sprintf("Lease %s has no annotation %s", le.Name, k.subnet)}
	}
	p, err := ip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, problem{reason: reasonMalformedSubnet, detail: fmt.Sprintf("Lease %s: annotation %s: %v", le.Name, k.subnet, err)}
	}
	fam := familyIPv4
	if p.Addr().Is6() {
		fam = familyIPv6
	}
	if got := le.Labels[k.leaseFamily]; got != fam {
		return netip.Prefix{}, problem{reason: reasonMalformedSubnet, detail: fmt.Sprintf("Lease %s: label %s is %q but subnet %s is %s", le.Name, k.leaseFamily, got, p, fam)}
	}
	if want := leaseName(p); le.Name != want {
		return netip.Prefix{}, problem{reason: reasonMalformedSubnet, detail: fmt.Sprintf("Lease %s claims subnet %s but a Lease for it must be named %s", le.Name, p, want)}
	}
	return p, problem{}
}

// cachedLeases returns every Lease in the cache as the allocator sees it,
// and the Leases themselves by name, to write them.
func (l *leaseMode) cachedLeases() ([]knownLease, map[string]*coordv1.Lease) {
	objs := l.m.informer.GetStore().List()
	known := make([]knownLease, 0, len(objs))
	byName := make(map[string]*coordv1.Lease, len(objs))
	for _, obj := range objs {
		s := obj.(*storedLease)
		known = append(known, knownLease{
			name:    s.lease.Name,
			subnet:  s.subnet,
			holder:  ptr.Deref(s.lease.Spec.HolderIdentity, ""),
			created: s.lease.CreationTimestamp.Time,
			expiry:  expiry(s.lease),
		})
		byName[s.lease.Name] = s.lease
	}
	return known, byName
}

// cachedLease returns the cached Lease of a key, nil if none.
func (l *leaseMode) cachedLease(key string) *coordv1.Lease {
	obj, exists, _ := l.m.informer.GetStore().GetByKey(key)
	if !exists {
		return nil
	}
	return obj.(*storedLease).lease
}

func (l *leaseMode) permissions() []permission {
	self, ns := l.m.cfg.NodeName, l.m.cfg.LeaseNamespace
	// get: the own Node for the Leases' owner reference; list and watch
	// (of the own Node only): its public address annotations.
	perms := []permission{{verb: "get", resource: "nodes", name: self}, {verb: "list", resource: "nodes"}, {verb: "watch", resource: "nodes"}}
	if l.m.cfg.SetNodeNetworkUnavailable {
		perms = append(perms, permission{verb: "patch", resource: "nodes", subresource: "status", name: self})
	}
	for _, verb := range []string{"get", "list", "watch", "create", "update"} {
		perms = append(perms, permission{verb: verb, group: coordv1.GroupName, resource: "leases", namespace: ns})
	}
	return append(perms, eventPermissions()...)
}
