package kernel

import (
	"errors"
	"fmt"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/overlayd/overlayd/pkg/nlbatch"
)

// Reconciler makes the kernel match a desired State. It is not safe for
// concurrent Apply calls; the daemon loop is its only caller.
type Reconciler struct {
	h      *netlink.Handle
	routes *netlink.Handle // for route dumps, with strict checking
	batch  *nlbatch.Socket // for setting many entries at once
	ns     netns.NsHandle  // the namespace worked in; netns.None() for the current one
	log    *zap.Logger

	mu    sync.Mutex
	owned map[int]string // ifindex -> name of links that are ours, for the event filter
	model model          // what the kernel is wanted to hold (model.go)
}

// NewReconciler returns a reconciler for the current network namespace.
func NewReconciler(log *zap.Logger) (*Reconciler, error) {
	return NewReconcilerAt(netns.None(), log)
}

// NewReconcilerAt returns a reconciler working in the namespace ns.
func NewReconcilerAt(ns netns.NsHandle, log *zap.Logger) (*Reconciler, error) {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("opening netlink: %w", err)
	}
	// Route dumps go through a second handle with strict checking, with
	// which the kernel filters by protocol itself: a pass reads overlayd's
	// routes only, not the whole table. (Kernels before 4.20 ignore it, and
	// the filter here does the work.) Neighbour dumps stay on the plain
	// handle: strict checking refuses the way they name a device.
	routes, err := netlink.NewHandleAt(ns)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("opening netlink: %w", err)
	}
	routes.SetStrictCheck(true)
	batch, err := nlbatch.Open(ns, unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		routes.Close()
		return nil, err
	}
	return &Reconciler{h: h, routes: routes, batch: batch, ns: ns, log: log, owned: map[int]string{}}, nil
}

// Close releases the netlink handles.
func (r *Reconciler) Close() {
	r.h.Close()
	r.routes.Close()
	r.batch.Close()
}

// ensured is what ensuring one table leaves for later: how many of its
// entries are wanted, and the removal of the kernel's entries of ours that
// are not, which Apply runs only after every table's additions.
type ensured struct {
	wanted int
	prune  func()
}

// Apply changes the kernel so that overlayd's entries are exactly want. It
// applies every entry it can and returns all failures joined; the caller
// retries. Order matters for traffic in flight: links first, then the FDB
// and neighbour entries a route's next hop needs, then routes (replaced in
// place, never deleted and re-added), and removals last.
func (r *Reconciler) Apply(want State) (Changes, Counts, error) {
	ch := newChanges()
	if err := want.Validate(); err != nil {
		return ch, nil, err
	}
	var errs []error
	fail := func(err error) { errs = append(errs, err) }
	r.mu.Lock()
	r.model.trusted = false // until this Apply has set everything
	r.mu.Unlock()

	links, err := r.ensureLinks(want.Links, &ch, fail)
	if err != nil {
		return ch, nil, err
	}
	index := r.deviceIndex(want, links)
	fdb, neighs, err := r.ensureNeighs(want, links, index, &ch, fail)
	if err != nil {
		return ch, nil, err
	}
	routes, err := r.ensureRoutes(want.Routes, index, &ch, fail)
	if err != nil {
		return ch, nil, err
	}

	// Removals, only of entries that are ours and not wanted: routes before
	// the next hops they used, the devices all of them were on last.
	routes.prune()
	neighs.prune()
	fdb.prune()
	r.pruneLinks(want, &ch, fail)

	r.mu.Lock()
	r.model.links = make(map[string]int, len(links))
	for name, l := range links {
		r.model.links[name] = l.Attrs().Index
	}
	r.model.trusted = len(errs) == 0
	r.mu.Unlock()

	counts := Counts{
		EntryLink:  len(want.Links),
		EntryRoute: routes.wanted,
		EntryNeigh: neighs.wanted,
		EntryFDB:   fdb.wanted,
	}
	return ch, counts, errors.Join(errs...)
}

// ApplyLinks creates, replaces or adjusts the wanted links and removes
// nothing. The daemon uses it to have a new device in place, and a datapath
// attached to it, before any route points into it.
func (r *Reconciler) ApplyLinks(want []Link) (Changes, error) {
	ch := newChanges()
	var errs []error
	_, err := r.ensureLinks(want, &ch, func(err error) { errs = append(errs, err) })
	if err != nil {
		return ch, err
	}
	return ch, errors.Join(errs...)
}
