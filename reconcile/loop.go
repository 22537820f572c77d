// Package reconcile is overlayd's one loop. Lease changes, kernel events,
// configuration changes and timers all only mark the state dirty; a pass
// then computes the whole desired state from the current snapshot and makes
// the kernel, the datapaths and the traffic rules match it. Repair,
// restart, stale-entry cleanup and backend switching are all that one path.
//
// The files follow a pass: run.go starts the loop and the sources of
// "dirty", desired.go computes the desired state (with a cache per peer),
// pass.go applies it, publish.go tells peers what this node now receives,
// reload.go and drain.go switch the backend while traffic flows.
package reconcile

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/util/workqueue"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/pkg/flanneld"
	"github.com/overlayd/overlayd/pkg/health"
	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/pkg/rules"
	"github.com/overlayd/overlayd/subnet"
)

// Kernel applies a desired kernel state and reports kernel events.
type Kernel interface {
	Apply(want kernel.State) (kernel.Changes, kernel.Counts, error)
	// ApplyChanged replaces a few entries, trusting the last Apply
	// (kernel.ErrUntrusted when it cannot).
	ApplyChanged(unset, set kernel.State) (kernel.Changes, kernel.Counts, error)
	ApplyLinks(want []kernel.Link) (kernel.Changes, error)
	Watch(ctx context.Context, watched func(ifindex int) bool, notify func(reason string))
	RxPackets(link string) (uint64, error)

	// Taking over from another agent (takeover.go).
	Links() ([]kernel.LinkInfo, error)
	OwnMACs() (map[string]net.HardwareAddr, error)
	Adopt(from, to string) error
	RemoveLink(name string) error
	RemoveRoutes(match func(kernel.RouteInfo) bool) (int, error)
}

// Rules keeps the traffic rules in place, in iptables or nftables.
type Rules interface {
	Ensure(want rules.Config) (changes int, err error)
	// ChangeSenders adds and removes senders in the ingress filter and
	// changes nothing else: the last Ensure's configuration, but for its
	// senders.
	ChangeSenders(added, removed []netip.Addr) error
	// RemoveForeign removes another agent's iptables chains and nftables
	// tables (flanneld's).
	RemoveForeign(chains []rules.Chain, tables []rules.Table) (removed int, err error)
}

// Events records what an operator should see on the Node (Kubernetes
// Events); nil records nothing.
type Events interface {
	Normal(reason, format string, args ...any)
	Warning(reason, format string, args ...any)
}

// Event reasons.
const (
	EventConfigApplied   = "NetConfApplied"
	EventConfigRefused   = "NetConfRefused"
	EventDatapathFailed  = "DatapathFailed"
	EventPeerSkipped     = "PeerUnreachable"
	EventPublicAddress   = "PublicAddress"
	EventFlanneldRunning = "FlanneldRunning"
)

// Config is everything the loop needs; the caller wires real parts in.
type Config struct {
	NodeName string
	Net      *netconf.Config
	Backend  backend.Backend
	Leases   subnet.Manager
	// Underlay is the external interface the flags choose. The own Node's
	// node-public-ip annotations choose again with UnderlayOptions (the
	// flags) on Host.
	Underlay        *ip.External
	UnderlayOptions ip.SelectOptions
	Host            ip.Host

	Kernel    Kernel
	Datapaths backend.Datapaths // opened by the caller, to resume before the lease is known
	Rules     Rules             // nil: no traffic rules

	NetConfigPath string // watched for changes when not empty
	NetConfig     []byte // its content at start

	SubnetFile        string
	IPMasq            bool          // --ip-masq
	MasqNoRandomFully bool          // --ip-masq-fully-random-disable
	ForwardRules      bool          // --iptables-forward-rules
	BlackholeRoute    bool          // --ip-blackhole-route
	IngressFilter     bool          // --ingress-filter: encapsulated traffic only from peers
	ResyncPeriod      time.Duration // kernel state checked at least this often
	RulesResync       time.Duration // traffic rules checked at least this often

	// FlanneldRunning returns the pid of a flanneld running on the node, 0
	// for none; default flanneld.Running.
	FlanneldRunning func() (int, error)

	Status *health.Status
	Events Events
	Log    *zap.Logger
}

// Loop is the node's reconciliation loop.
type Loop struct {
	cfg   Config
	log   *zap.Logger
	queue workqueue.TypedRateLimitingInterface[string]
	// underlayIndex is the underlay's ifindex, for the kernel watch's filter.
	underlayIndex atomic.Int64

	// The fields below belong to the pass (one goroutine), except pending.
	node      backend.Node
	addrs     subnet.NodeAddresses // the own Node's address annotations in force
	peers     peerCache
	lastState *backend.State // last successfully applied desired state
	// lastUnordered: lastState's kernel entries are not in the order a
	// full pass builds (a changed-peers pass edited them).
	lastUnordered bool
	// ownLinks are the devices this node wants whatever its peers: its
	// backend's, and the draining ones'.
	ownLinks []kernel.Link
	// senderRefs counts the peers sending from each of lastState's
	// Senders (nil when none are wanted).
	senderRefs senderRefs
	published  *subnet.LeaseAttrs

	// startNet is the configuration the loop started with. What cannot
	// change live is the same in every configuration accepted since, so
	// Reload compares with it without touching the pass's state.
	startNet *netconf.Config
	pending  atomic.Pointer[pendingConfig] // offered by Reload, taken by a pass
	// full: the next pass is a full one. Everything that marks the state
	// dirty sets it but lease changes alone (changed.go).
	full atomic.Bool
	// rulesDue: the traffic rules are to be checked (the rules resync),
	// which a full pass does anyway.
	rulesDue atomic.Bool
	ownRaw   json.RawMessage // the Backend object in force
	drains   []*drain
	takeover takeover
}

// syncKey is the queue's only item: there is one state, and it is dirty or not.
const syncKey = "sync"

// New prepares a loop; Run starts it.
func New(cfg Config) *Loop {
	if cfg.FlanneldRunning == nil {
		cfg.FlanneldRunning = flanneld.Running
	}
	limiter := workqueue.NewTypedItemExponentialFailureRateLimiter[string](50*time.Millisecond, 5*time.Second)
	return &Loop{
		cfg:      cfg,
		log:      cfg.Log,
		queue:    workqueue.NewTypedRateLimitingQueueWithConfig(limiter, workqueue.TypedRateLimitingQueueConfig[string]{Name: "overlayd"}),
		peers:    newPeerCache(cfg.Backend),
		ownRaw:   cfg.Net.Backend,
		startNet: cfg.Net,
	}
}

func (l *Loop) warn(reason, format string, args ...any) {
	if l.cfg.Events != nil {
		l.cfg.Events.Warning(reason, format, args...)
	}
}

func (l *Loop) normal(reason, format string, args ...any) {
	if l.cfg.Events != nil {
		l.cfg.Events.Normal(reason, format, args...)
	}
}
