// Package rules keeps overlayd's iptables traffic rules — masquerading
// (--ip-masq) and FORWARD accepts (--iptables-forward-rules) — as a desired
// state: Ensure compares the kernel with what the config asks for and changes
// only the difference, in overlayd's own chains and the one jump rule to each.
// Nothing else in the tables is ever flushed, deleted or moved.
// Documentation/iptables.md explains the rules and their placement.
package rules

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/coreos/go-iptables/iptables"
	"go.uber.org/zap"
)

// lockWaitSeconds bounds how long a command waits for the xtables lock held
// by another writer (kube-proxy, a policy engine) before failing; the next
// Ensure retries.
const lockWaitSeconds = 10

// Option adjusts New.
type Option func(*options)

type options struct{ backend string }

// WithBackend picks the iptables variant: "nft" (iptables-nft) or "legacy"
// (iptables-legacy). By default overlayd uses whatever `iptables` in PATH is,
// which must be the variant the rest of the node (kube-proxy, the policy
// engine) uses.
func WithBackend(name string) Option { return func(o *options) { o.backend = name } }

// family is one of iptables / ip6tables.
type family struct {
	name        string // "ipv4" or "ipv6", for logs and metrics
	ipt         *iptables.IPTables
	restorePath string
	ingress     bool // the ingress chain is there (its drop counter is read)
}

// Manager owns overlayd's iptables rules. It is safe for concurrent use.
type Manager struct {
	log    *zap.Logger
	v4, v6 *family // v6 is nil when ip6tables is not usable

	mu sync.Mutex
	// verified holds, per chain, the key of the content last confirmed in
	// the kernel (absentKey after a removal). A difference found while the
	// wanted content is unchanged is drift, counted as a repair.
	verified map[stateKey]string
	// printed holds how this iptables printed our rules and jump right
	// after we wrote them. A version that formats a rule differently from
	// how we wrote it would otherwise make a correct chain look wrong and
	// be rewritten on every Ensure.
	printed map[stateKey]printedForm
	// shadowed is, per chain, the foreign rules last reported as sitting
	// below our jump, so the notice is logged once per change.
	shadowed map[stateKey]string
}

type stateKey struct{ family, chain string }

type printedForm struct {
	key   string // chainState.key() of the content written
	rules [][]string
	jump  []string
}

const absentKey = "<absent>"

// New finds iptables and ip6tables (and their -restore companions of the
// same variant). iptables is required; without a usable ip6tables only IPv4
// rules can be ensured.
func New(log *zap.Logger, opts ...Option) (*Manager, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	switch o.backend {
	case "", "nft", "legacy":
	default:
		return nil, fmt.Errorf("rules: iptables backend %q: want \"nft\" or \"legacy\"", o.backend)
	}
	m := &Manager{log: log, verified: map[stateKey]string{}, printed: map[stateKey]printedForm{}, shadowed: map[stateKey]string{}}
	var err error
	if m.v4, err = newFamily(false, o.backend); err != nil {
		return nil, err
	}
	if m.v6, err = newFamily(true, o.backend); err != nil {
		log.Warn("ip6tables is not usable; IPv6 traffic rules cannot be ensured", zap.Error(err))
		m.v6 = nil
	}
	return m, nil
}

func newFamily(v6 bool, backend string) (*family, error) {
	base, proto, name := "iptables", iptables.ProtocolIPv4, "ipv4"
	if v6 {
		base, proto, name = "ip6tables", iptables.ProtocolIPv6, "ipv6"
	}
	bin, restore := base, base+"-restore"
	if backend != "" {
		bin, restore = base+"-"+backend, base+"-"+backend+"-restore"
	}
	binPath, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("rules: finding %s: %w", bin, err)
	}
	ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Path(binPath), iptables.Timeout(lockWaitSeconds))
	if err != nil {
		return nil, fmt.Errorf("rules: using %s: %w", binPath, err)
	}
	variant, err := variantOf(binPath)
	if err != nil {
		return nil, err
	}
	restorePath, err := exec.LookPath(restore)
	if err == nil {
		var rv string
		if rv, err = variantOf(restorePath); err == nil && rv != variant {
			// e.g. iptables points at nft but iptables-restore at legacy:
			// the restore must write the tables the rest of us read.
			restorePath, err = exec.LookPath(base + "-" + variant + "-restore")
		}
	}
	if err != nil {
		return nil, fmt.Errorf("rules: finding the %s variant of %s: %w", variant, restore, err)
	}
	return &family{name: name, ipt: ipt, restorePath: restorePath}, nil
}

// variantOf returns "nft" or "legacy" for an iptables binary.
func variantOf(path string) (string, error) {
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("rules: %s --version: %w", path, err)
	}
	if bytes.Contains(out, []byte("(nf_tables)")) {
		return "nft", nil
	}
	return "legacy", nil
}

// Ensure makes the kernel match cfg: it creates or restores the wanted
// chains and jumps, rewrites a chain only when its content is wrong, and
// removes chains of a switched-off feature or family — also ones left by an
// earlier process. It returns the number of changes made (0 when everything
// was already right). It keeps going after an error and returns all of them.
func (m *Manager) Ensure(cfg Config) (changes int, err error) {
	if err := cfg.Validate(); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()

	var errs []error
	for _, v6 := range []bool{false, true} {
		f, on := m.v4, cfg.Network.IsValid()
		if v6 {
			f, on = m.v6, cfg.IPv6Network.IsValid()
		}
		if f == nil {
			if on {
				errs = append(errs, errors.New("rules: Config.IPv6Network is set but ip6tables is not usable"))
			}
			continue
		}
		want := desired(cfg, v6, f.ipt.HasRandomFully() && !cfg.NoRandomFully)
		if want[IngressChain] != nil {
			// The set the chain refers to exists, full, before the chain.
			n, err := ensurePeerSet(v6, cfg.Ingress.senders(v6))
			changes += n
			if err != nil {
				errs = append(errs, err)
				want[IngressChain] = nil // never a chain matching a set that is not right
			}
		}
		for _, d := range ownedChains {
			n, err := m.ensureChain(f, d, want[d.name], on)
			changes += n
			if err != nil {
				errorsTotal.WithLabelValues(f.name, d.table).Inc()
				errs = append(errs, err)
			}
		}
		if want[IngressChain] == nil && len(errs) == 0 {
			if err := destroyPeerSet(v6); err != nil {
				errs = append(errs, err)
			}
		}
		f.ingress = want[IngressChain] != nil
		f.readDrops()
	}
	return changes, errors.Join(errs...)
}

// ChangeSenders adds and removes senders in the ingress filter's peer sets
// and changes nothing else: for a configuration that differs from the one
// the last Ensure put in place in its senders alone (a peer moved, joined
// or left). The rules resync's Ensure finds anything else that differs.
func (m *Manager) ChangeSenders(added, removed []netip.Addr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for _, f := range []*family{m.v4, m.v6} {
		if f == nil || !f.ingress {
			continue
		}
		v6 := f == m.v6
		if _, err := changePeerSet(v6, familyOf(added, v6), familyOf(removed, v6)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// readDrops refreshes the ingress drop counters of the families that have
// an ingress chain.
func (m *Manager) readDrops() {
	if !m.mu.TryLock() {
		return
	}
	defer m.mu.Unlock()
	for _, f := range []*family{m.v4, m.v6} {
		if f != nil {
			f.readDrops()
		}
	}
}

func (m *Manager) ensureChain(f *family, d chainDef, want *chainState, familyOn bool) (int, error) {
	cur, err := f.read(d)
	if err != nil {
		if want == nil && !familyOn {
			// A family that is off may have no usable tables at all (no
			// IPv6 in the kernel); then nothing of ours can be there.
			m.log.Debug("cannot list iptables of a switched-off family", zap.String("family", f.name), zap.Error(err))
			return 0, nil
		}
		return 0, err
	}
	sk := stateKey{f.name, d.name}
	if want == nil {
		return m.remove(f, d, cur, sk)
	}
	return m.apply(f, want, cur, sk)
}

// current is what the kernel holds of one of our chains.
type current struct {
	exists bool
	rules  [][]string // our chain's rules, without "-A <chain>"
	jumps  [][]string // rules in the parent that jump to our chain, without "-A <parent>"
	below  [][]string // other rules in the parent after the first jump to our chain
}

func (f *family) read(d chainDef) (current, error) {
	var c current
	var err error
	c.rules, err = f.listRules(d.table, d.name)
	var ierr *iptables.Error
	switch {
	case err == nil:
		c.exists = true
	case errors.As(err, &ierr) && ierr.ExitStatus() == 1:
		// Listing a missing chain exits 1 (go-iptables' ChainExists relies
		// on the same); one command instead of two per chain.
		c.rules = nil
	default:
		return c, err
	}
	parentRules, err := f.listRules(d.table, d.parent)
	if err != nil {
		return c, err
	}
	for _, r := range parentRules {
		switch {
		case jumpsTo(r, d.name):
			c.jumps = append(c.jumps, r)
		case len(c.jumps) > 0:
			c.below = append(c.below, r)
		}
	}
	return c, nil
}

// listRules returns the rules of chain as arguments after "-A <chain>".
func (f *family) listRules(table, chain string) ([][]string, error) {
	lines, err := f.ipt.List(table, chain)
	if err != nil {
		return nil, fmt.Errorf("rules: %s: listing chain %s in table %s: %w", f.name, chain, table, err)
	}
	var out [][]string
	for _, l := range lines {
		args, err := splitRule(l)
		if err != nil {
			return nil, fmt.Errorf("rules: %s: listing chain %s in table %s: %w", f.name, chain, table, err)
		}
		if len(args) >= 2 && args[0] == "-A" && args[1] == chain {
			out = append(out, args[2:])
		}
	}
	return out, nil
}

// writeChain replaces our chain's content in one iptables-restore
// transaction. With --noflush only the declared chain (ours) is flushed;
// the jump to it, if present, keeps pointing at it, so there is no moment
// without rules.
func (f *family) writeChain(s *chainState) error {
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n:%s - [0:0]\n", s.table, s.name)
	for _, r := range s.rules {
		b.WriteString(joinRule(append([]string{"-A", s.name}, r...)))
		b.WriteByte('\n')
	}
	b.WriteString("COMMIT\n")
	cmd := exec.Command(f.restorePath, "--noflush", "--wait", strconv.Itoa(lockWaitSeconds))
	cmd.Stdin = strings.NewReader(b.String())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("rules: %s: writing chain %s in table %s with %s: %w: %s",
			f.name, s.name, s.table, f.restorePath, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func (m *Manager) apply(f *family, want *chainState, cur current, sk stateKey) (int, error) {
	key := want.key()
	p, learned := m.printed[sk]
	learned = learned && p.key == key
	chainOK := cur.exists && (rulesEqual(cur.rules, want.rules) || learned && rulesEqual(cur.rules, p.rules))
	isOurJump := func(j []string) bool {
		return slices.Equal(j, want.jump) || learned && slices.Equal(j, p.jump)
	}

	// Keep the first right jump where it is; any other jump to our chain
	// (a duplicate, or one from an older overlayd) goes.
	kept := false
	var stale [][]string
	for _, j := range cur.jumps {
		if !kept && isOurJump(j) {
			kept = true
			continue
		}
		stale = append(stale, j)
	}
	if kept {
		m.noticeShadowed(f, want, cur.below, sk)
	}

	changes := 0
	var restored, removed []string
	prev, seen := m.verified[sk]
	log := m.log.With(zap.String("family", f.name), zap.String("table", want.table), zap.String("chain", want.name))
	defer func() {
		if changes == 0 {
			return
		}
		fields := []zap.Field{zap.Strings("restored", restored), zap.Strings("removed", removed)}
		if seen && prev == key {
			repairsTotal.WithLabelValues(f.name, want.table, want.name).Inc()
			log.Warn("restored overlayd iptables rules that were changed by someone else", fields...)
		} else {
			log.Info("programmed overlayd iptables rules", fields...)
		}
	}()

	if !chainOK {
		if !cur.exists {
			restored = append(restored, "chain "+want.name)
		}
		missing, extra := diffRules(want.name, want.rules, cur.rules)
		restored = append(restored, missing...)
		removed = append(removed, extra...)
		if len(missing) == 0 && len(extra) == 0 && cur.exists {
			restored = append(restored, "order of the rules in "+want.name)
		}
		if err := f.writeChain(want); err != nil {
			return changes, err
		}
		changes++
	}
	for _, j := range stale {
		if err := f.ipt.Delete(want.table, want.parent, j...); err != nil && !isNotExist(err) {
			return changes, fmt.Errorf("rules: %s: deleting stale jump %q from %s: %w", f.name, joinRule(j), want.parent, err)
		}
		changes++
		removed = append(removed, "-A "+want.parent+" "+joinRule(j))
	}
	if !kept && want.first {
		// First: a chain that only drops sees the packets before anything
		// accepts them.
		if err := f.ipt.Insert(want.table, want.parent, 1, want.jump...); err != nil {
			return changes, fmt.Errorf("rules: %s: adding jump from %s to %s in table %s: %w", f.name, want.parent, want.name, want.table, err)
		}
		changes++
		restored = append(restored, "-I "+want.parent+" "+joinRule(want.jump))
	} else if !kept {
		// Appended: below every rule already in the chain, so a policy
		// engine's verdicts come first (Documentation/iptables.md).
		if err := f.ipt.Append(want.table, want.parent, want.jump...); err != nil {
			return changes, fmt.Errorf("rules: %s: adding jump from %s to %s in table %s: %w", f.name, want.parent, want.name, want.table, err)
		}
		changes++
		restored = append(restored, "-A "+want.parent+" "+joinRule(want.jump))
	}
	if changes > 0 {
		if err := m.learnPrinted(f, want, sk, key); err != nil {
			return changes, err
		}
	}
	m.verified[sk] = key
	return changes, nil
}

// learnPrinted reads back what was just written and remembers how this
// iptables prints it, so the next Ensure compares like with like.
func (m *Manager) learnPrinted(f *family, want *chainState, sk stateKey, key string) error {
	cur, err := f.read(want.chainDef)
	if err != nil {
		return err
	}
	if len(cur.rules) != len(want.rules) || len(cur.jumps) != 1 {
		return fmt.Errorf("rules: %s: right after writing, chain %s in table %s has %d rules (want %d) and %d jumps to it (want 1); someone else is changing it",
			f.name, want.name, want.table, len(cur.rules), len(want.rules), len(cur.jumps))
	}
	if !rulesEqual(cur.rules, want.rules) || !slices.Equal(cur.jumps[0], want.jump) {
		m.log.Debug("iptables prints overlayd's rules differently from how they were written",
			zap.String("family", f.name), zap.String("chain", want.name))
	}
	m.printed[sk] = printedForm{key: key, rules: cur.rules, jump: cur.jumps[0]}
	m.noticeShadowed(f, want, cur.below, sk)
	return nil
}

// noticeShadowed logs, once per change, the foreign rules that sit below
// our jump: for traffic our chain decides (pod traffic in FORWARD, pod
// traffic masqueraded in POSTROUTING) they are never reached. overlayd
// appends its jump and never moves foreign rules, so such rules were
// appended after overlayd's — e.g. by a policy engine in append mode,
// which then needs --iptables-forward-rules=false.
func (m *Manager) noticeShadowed(f *family, want *chainState, below [][]string, sk stateKey) {
	var lines []string
	for _, r := range below {
		lines = append(lines, "-A "+want.parent+" "+joinRule(r))
	}
	sum := strings.Join(lines, "\n")
	if sum == m.shadowed[sk] {
		return
	}
	m.shadowed[sk] = sum
	if len(lines) > 0 {
		m.log.Info("foreign rules below overlayd's jump do not see the traffic overlayd's chain decides",
			zap.String("family", f.name), zap.String("table", want.table), zap.String("chain", want.parent),
			zap.Strings("rules", lines))
	}
}

// remove deletes the jumps to one of our chains and then the chain, when
// its feature or family is switched off.
func (m *Manager) remove(f *family, d chainDef, cur current, sk stateKey) (int, error) {
	changes := 0
	var removed []string
	defer func() {
		if changes > 0 {
			m.log.Info("removed overlayd iptables rules of a switched-off feature",
				zap.String("family", f.name), zap.String("table", d.table), zap.String("chain", d.name),
				zap.Strings("removed", removed))
		}
	}()
	for _, j := range cur.jumps {
		if err := f.ipt.Delete(d.table, d.parent, j...); err != nil && !isNotExist(err) {
			return changes, fmt.Errorf("rules: %s: deleting jump %q from %s in table %s: %w", f.name, joinRule(j), d.parent, d.table, err)
		}
		changes++
		removed = append(removed, "-A "+d.parent+" "+joinRule(j))
	}
	if cur.exists {
		if err := f.ipt.ClearAndDeleteChain(d.table, d.name); err != nil {
			return changes, fmt.Errorf("rules: %s: deleting chain %s in table %s: %w", f.name, d.name, d.table, err)
		}
		changes++
		removed = append(removed, "chain "+d.name)
	}
	m.verified[sk] = absentKey
	return changes, nil
}

func rulesEqual(a, b [][]string) bool {
	return slices.EqualFunc(a, b, func(x, y []string) bool { return slices.Equal(x, y) })
}

// diffRules lists the wanted rules that are missing and the present rules
// that are not wanted, as "-A <chain> ..." lines.
func diffRules(chain string, want, have [][]string) (missing, extra []string) {
	count := map[string]int{}
	for _, r := range have {
		count[joinRule(r)]++
	}
	for _, r := range want {
		s := joinRule(r)
		if count[s] > 0 {
			count[s]--
			continue
		}
		missing = append(missing, "-A "+chain+" "+s)
	}
	for _, r := range have {
		s := joinRule(r)
		if count[s] > 0 {
			count[s]--
			extra = append(extra, "-A "+chain+" "+s)
		}
	}
	return missing, extra
}

func isNotExist(err error) bool {
	var e *iptables.Error
	return errors.As(err, &e) && e.IsNotExist()
}
