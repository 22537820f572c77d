package rules

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"sigs.k8s.io/knftables"
)

// nftTimeout bounds one nft run.
const nftTimeout = 30 * time.Second

// NFT keeps overlayd's rules in nftables (EnableNFTables), in the table
// inet overlayd, with knftables, which drives the nft command as kube-proxy
// does: every change is one nft transaction, applied whole or not at all.
// It is safe for concurrent use.
type NFT struct {
	log *zap.Logger
	nft knftables.Interface

	mu       sync.Mutex
	verified string // the content last confirmed in the kernel ("" unknown)
	ingress  bool   // the table has the ingress filter's counter
}

// NewNFT finds nft and checks that the kernel has nf_tables. Its error says
// which is missing.
func NewNFT(log *zap.Logger) (*NFT, error) {
	if _, err := exec.LookPath("nft"); err != nil {
		return nil, fmt.Errorf("nftables mode needs the nft command (Debian and Ubuntu: package nftables): %w", err)
	}
	nft, err := knftables.New(knftables.InetFamily, NFTTable)
	if err != nil {
		return nil, fmt.Errorf("nftables mode: nft cannot use the kernel's nf_tables (CONFIG_NF_TABLES, nf_tables_inet): %w", err)
	}
	return &NFT{log: log, nft: nft}, nil
}

// Ensure makes the table hold exactly cfg's rules: nothing when every
// feature or family is off (the table is deleted). A chain whose rules
// differ from the wanted ones (deleted, flushed, edited by hand) is
// rewritten whole in the same transaction as everything else. It returns
// the number of chains written or removed.
func (n *NFT) Ensure(cfg Config) (int, error) {
	if err := cfg.Validate(); err != nil {
		return 0, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), nftTimeout)
	defer cancel()

	want := nftDesired(cfg)
	key := nftKey(want)
	have, err := n.current(ctx)
	if err != nil {
		nftErrors.Inc()
		return 0, err
	}
	tx := n.nft.NewTransaction()
	changes := 0
	if want == nil {
		if have == nil {
			n.verified = key
			return 0, nil
		}
		tx.Delete(&knftables.Table{})
		changes = len(have)
	} else {
		tx.Add(&knftables.Table{Comment: knftables.PtrTo("overlayd: pod network traffic rules")})
		// The sets and the counter the ingress chain refers to come first.
		sets, setChanges, err := n.ensurePeerSets(ctx, tx, cfg.Ingress)
		if err != nil {
			nftErrors.Inc()
			return 0, err
		}
		changes += setChanges
		wanted := map[string]bool{}
		for _, c := range want {
			wanted[c.chain.Name] = true
			if slices.Equal(have[c.chain.Name], comments(c.rules)) {
				continue
			}
			tx.Add(c.chain)
			tx.Flush(c.chain)
			for _, r := range c.rules {
				tx.Add(&knftables.Rule{Chain: c.chain.Name, Rule: r.rule, Comment: knftables.PtrTo(r.comment)})
			}
			changes++
			if n.verified == key {
				nftRepairs.WithLabelValues(c.chain.Name).Inc()
				n.log.Info("restored nftables chain", zap.String("chain", c.chain.Name))
			}
		}
		for name := range have {
			if !wanted[name] {
				tx.Flush(&knftables.Chain{Name: name})
				tx.Delete(&knftables.Chain{Name: name})
				changes++
			}
		}
		if len(cfg.Ingress.Ports) == 0 {
			// No chain refers to the sets any more (removed just above).
			for _, v6 := range []bool{false, true} {
				if set := nftPeerSet(v6); slices.Contains(sets, set.Name) {
					tx.Delete(set)
					changes++
				}
			}
		}
	}
	if changes > 0 {
		if err := n.nft.Run(ctx, tx); err != nil {
			nftErrors.Inc()
			return 0, fmt.Errorf("nft: %w", err)
		}
	}
	n.verified = key
	n.ingress = want != nil && len(cfg.Ingress.Ports) > 0
	n.observeDrops(ctx)
	return changes, nil
}

// readDrops refreshes the ingress drop counter, when there is an ingress
// filter, for a scrape.
func (n *NFT) readDrops() {
	if !n.mu.TryLock() {
		return
	}
	defer n.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), nftTimeout)
	defer cancel()
	n.observeDrops(ctx)
}

func (n *NFT) observeDrops(ctx context.Context) {
	if !n.ingress {
		return
	}
	counters, err := n.nft.ListCounters(ctx)
	if err != nil {
		return
	}
	for _, c := range counters {
		if c.Name == nftIngressCounter && c.Packets != nil {
			ingressDropped.observe("nftables", *c.Packets)
		}
	}
}

// ChangeSenders adds and removes senders in the ingress filter's peer sets
// in one transaction and changes nothing else (see Manager.ChangeSenders).
func (n *NFT) ChangeSenders(added, removed []netip.Addr) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.ingress || len(added)+len(removed) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), nftTimeout)
	defer cancel()
	tx := n.nft.NewTransaction()
	for _, a := range added {
		tx.Add(&knftables.Element{Set: nftPeerSet(a.Is6()).Name, Key: []string{a.String()}})
	}
	for _, a := range removed {
		// Added first, so that the delete of an element already gone
		// (removed by hand) does not fail the transaction.
		tx.Add(&knftables.Element{Set: nftPeerSet(a.Is6()).Name, Key: []string{a.String()}})
		tx.Delete(&knftables.Element{Set: nftPeerSet(a.Is6()).Name, Key: []string{a.String()}})
	}
	if err := n.nft.Run(ctx, tx); err != nil {
		nftErrors.Inc()
		return fmt.Errorf("nft: changing the peer sets: %w", err)
	}
	return nil
}

// ensurePeerSets adds to tx what makes the peer sets hold exactly the
// senders of each family, and the ingress counter, when there is an ingress
// filter. It returns the sets the table has now.
func (n *NFT) ensurePeerSets(ctx context.Context, tx *knftables.Transaction, in Ingress) (sets []string, changes int, err error) {
	sets, err = n.nft.List(ctx, "set")
	if err != nil && !knftables.IsNotFound(err) {
		return nil, 0, fmt.Errorf("nft: listing sets: %w", err)
	}
	if len(in.Ports) == 0 {
		return sets, 0, nil
	}
	tx.Add(&knftables.Counter{Name: nftIngressCounter})
	for _, v6 := range []bool{false, true} {
		set := nftPeerSet(v6)
		have := map[string]bool{}
		if slices.Contains(sets, set.Name) {
			elems, err := n.nft.ListElements(ctx, "set", set.Name)
			if err != nil && !knftables.IsNotFound(err) {
				return nil, 0, fmt.Errorf("nft: listing set %s: %w", set.Name, err)
			}
			for _, e := range elems {
				if len(e.Key) == 1 {
					have[e.Key[0]] = true
				}
			}
		}
		tx.Add(set)
		want := map[string]bool{}
		for _, a := range in.senders(v6) {
			k := a.String()
			want[k] = true
			if !have[k] {
				tx.Add(&knftables.Element{Set: set.Name, Key: []string{k}})
				changes++
			}
		}
		for k := range have {
			if !want[k] {
				tx.Delete(&knftables.Element{Set: set.Name, Key: []string{k}})
				changes++
			}
		}
	}
	return sets, changes, nil
}

// current returns the rule comments of each chain of the table, nil when
// there is no table.
func (n *NFT) current(ctx context.Context) (map[string][]string, error) {
	chains, err := n.nft.List(ctx, "chain")
	if knftables.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("nft: listing table %s: %w", NFTTable, err)
	}
	out := make(map[string][]string, len(chains))
	for _, c := range chains {
		rules, err := n.nft.ListRules(ctx, c)
		if err != nil && !knftables.IsNotFound(err) {
			return nil, fmt.Errorf("nft: listing chain %s: %w", c, err)
		}
		out[c] = make([]string, 0, len(rules))
		for _, r := range rules {
			if r.Comment == nil {
				out[c] = append(out[c], "")
				continue
			}
			out[c] = append(out[c], *r.Comment)
		}
	}
	return out, nil
}

// RemoveTables deletes other agents' tables (flanneld's flannel-ipv4 and
// flannel-ipv6) and returns how many it found. Only call it once that
// agent is gone and overlayd's rules are in place.
func (n *NFT) RemoveTables(tables []Table) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), nftTimeout)
	defer cancel()
	var errs []error
	removed := 0
	for _, t := range tables {
		other, err := knftables.New(t.Family, t.Name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		tx := other.NewTransaction()
		tx.Delete(&knftables.Table{})
		err = other.Run(ctx, tx)
		switch {
		case knftables.IsNotFound(err):
		case err != nil:
			errs = append(errs, fmt.Errorf("nft: deleting table %s %s: %w", t.Family, t.Name, err))
		default:
			removed++
			n.log.Info("removed nftables table left by another agent", zap.String("table", string(t.Family)+" "+t.Name))
		}
	}
	return removed, errors.Join(errs...)
}

// Table is an nftables table of another agent's.
type Table struct {
	Family knftables.Family
	Name   string
}

func comments(rules []nftRule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = r.comment
	}
	return out
}

func nftKey(chains []nftChain) string {
	var b strings.Builder
	for _, c := range chains {
		b.WriteString(c.chain.Name)
		for _, r := range c.rules {
			b.WriteString("|" + r.comment)
		}
		b.WriteByte('\n')
	}
	return b.String()
}
