package rules

import (
	"errors"
	"fmt"

	"go.uber.org/zap"
)

// Chain is a chain of another agent's (flanneld's FLANNEL-POSTRTG and
// FLANNEL-FWD) and the built-in chain that jumps to it.
type Chain struct {
	Table, Parent, Name string
}

// RemoveForeign removes another agent's chains, in every family: each rule
// of Parent that jumps to the chain, then the chain itself. Only call it
// once that agent is gone and overlayd's own rules are in place. It returns
// how many chains it removed.
func (m *Manager) RemoveForeign(chains []Chain) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	removed := 0
	for _, f := range []*family{m.v4, m.v6} {
		if f == nil {
			continue
		}
		for _, c := range chains {
			ok, err := f.removeForeign(c)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: removing %s/%s: %w", f.name, c.Table, c.Name, err))
				continue
			}
			if ok {
				removed++
				m.log.Info("removed chain left by another agent", zap.String("family", f.name), zap.String("table", c.Table), zap.String("chain", c.Name))
			}
		}
	}
	return removed, errors.Join(errs...)
}

func (f *family) removeForeign(c Chain) (bool, error) {
	exists, err := f.ipt.ChainExists(c.Table, c.Name)
	if err != nil || !exists {
		return false, err
	}
	jumps, err := f.ipt.List(c.Table, c.Parent)
	if err != nil {
		return false, err
	}
	for _, line := range jumps {
		args, err := splitRule(line)
		if err != nil {
			return false, err
		}
		// "-A <Parent> <spec...>": delete by spec, not by number, so a rule
		// another writer inserted meanwhile is never hit.
		if len(args) < 2 || args[0] != "-A" || !jumpsTo(args, c.Name) {
			continue
		}
		if err := f.ipt.Delete(c.Table, c.Parent, args[2:]...); err != nil {
			return false, err
		}
	}
	return true, f.ipt.ClearAndDeleteChain(c.Table, c.Name)
}
