package rules

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"go.uber.org/zap"
)

// Modes keeps overlayd's rules in the mode the configuration asks for,
// iptables or nftables (Config.NFTables), and none of overlayd's in the
// other: a switch puts the new mode's rules in place before it removes the
// old mode's, and a start removes what an earlier run left in the other
// mode. A mode whose tools are missing is an error only when it is the one
// asked for. It is safe for concurrent use.
type Modes struct {
	log  *zap.Logger
	opts []Option

	mu     sync.Mutex
	ipt    *Manager
	iptErr error
	nft    *NFT
	nftErr error
	// nftActive: the last Ensure put the rules in nftables.
	nftActive bool
}

// NewModes returns the rules in both modes; each mode's tools are looked
// for when it is first needed.
func NewModes(log *zap.Logger, opts ...Option) *Modes {
	m := &Modes{log: log, opts: opts}
	scraped.Store(m)
	return m
}

// readDrops refreshes the ingress drop counters from the kernel. A scrape
// during an Ensure skips it: the Ensure reads them itself.
func (m *Modes) readDrops() {
	if !m.mu.TryLock() {
		return
	}
	defer m.mu.Unlock()
	if m.ipt != nil {
		m.ipt.readDrops()
	}
	if m.nft != nil {
		m.nft.readDrops()
	}
}

// ChangeSenders changes the senders in the peer sets of the mode the last
// Ensure used (Manager.ChangeSenders).
func (m *Modes) ChangeSenders(added, removed []netip.Addr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.nftActive && m.nft != nil {
		return m.nft.ChangeSenders(added, removed)
	}
	if m.nftActive || m.ipt == nil {
		return errors.New("rules: no Ensure has put the rules in place")
	}
	return m.ipt.ChangeSenders(added, removed)
}

func (m *Modes) iptables() (*Manager, error) {
	if m.ipt == nil && m.iptErr == nil {
		m.ipt, m.iptErr = New(m.log.Named("iptables"), m.opts...)
	}
	return m.ipt, m.iptErr
}

func (m *Modes) nftables() (*NFT, error) {
	if m.nft == nil && m.nftErr == nil {
		m.nft, m.nftErr = NewNFT(m.log.Named("nftables"))
	}
	return m.nft, m.nftErr
}

// Ensure puts cfg's rules in place in its mode, then removes overlayd's in
// the other (where that mode's tools exist at all: without them nothing of
// overlayd's can be there).
func (m *Modes) Ensure(cfg Config) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	off := Config{}
	var changes int
	var err error
	m.nftActive = cfg.NFTables
	if cfg.NFTables {
		nft, nerr := m.nftables()
		if nerr != nil {
			return 0, nerr
		}
		if changes, err = nft.Ensure(cfg); err != nil {
			return changes, err
		}
		if ipt, ierr := m.iptables(); ierr == nil {
			n, err := ipt.Ensure(off)
			return changes + n, err
		}
		return changes, nil
	}
	ipt, ierr := m.iptables()
	if ierr != nil {
		return 0, ierr
	}
	if changes, err = ipt.Ensure(cfg); err != nil {
		return changes, err
	}
	if nft, nerr := m.nftables(); nerr == nil {
		n, err := nft.Ensure(off)
		return changes + n, err
	}
	return changes, nil
}

// RemoveForeign removes another agent's iptables chains and nftables
// tables, in whichever mode's tools exist.
func (m *Modes) RemoveForeign(chains []Chain, tables []Table) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	removed := 0
	if ipt, err := m.iptables(); err == nil {
		n, err := ipt.RemoveForeign(chains)
		removed += n
		if err != nil {
			errs = append(errs, fmt.Errorf("iptables: %w", err))
		}
	}
	if nft, err := m.nftables(); err == nil && len(tables) > 0 {
		n, err := nft.RemoveTables(tables)
		removed += n
		if err != nil {
			errs = append(errs, fmt.Errorf("nftables: %w", err))
		}
	}
	return removed, errors.Join(errs...)
}

// RemoveAll removes overlayd's rules in both modes (overlayd --uninstall).
func (m *Modes) RemoveAll() (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	changes := 0
	if ipt, err := m.iptables(); err == nil {
		n, err := ipt.Ensure(Config{})
		changes += n
		errs = append(errs, err)
	}
	if nft, err := m.nftables(); err == nil {
		n, err := nft.Ensure(Config{})
		changes += n
		errs = append(errs, err)
	}
	return changes, errors.Join(errs...)
}
