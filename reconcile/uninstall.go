package reconcile

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"go.uber.org/zap"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/pkg/kernel"
)

// Uninstall removes everything of overlayd's from the node: its devices and
// every entry on them, its routes, its iptables chains and the datapaths'
// files. It is the same reconciliation with nothing wanted, so it removes
// exactly what a pass would own. Stopping the agent leaves all of it in
// place (a restart must not cut pods off); this is for rolling a node back
// to flanneld, or for removing overlayd from a cluster.
func Uninstall(k Kernel, r interface{ RemoveAll() (int, error) }, datapaths backend.Datapaths, log *zap.Logger) error {
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(datapaths)) {
		if err := datapaths[name].Ensure(nil, nil); err != nil {
			errs = append(errs, fmt.Errorf("%s datapath: %w", name, err))
		}
	}
	ch, _, err := k.Apply(kernel.State{})
	if err != nil {
		errs = append(errs, fmt.Errorf("kernel: %w", err))
	}
	n := 0
	if r != nil {
		if n, err = r.RemoveAll(); err != nil {
			errs = append(errs, fmt.Errorf("traffic rules: %w", err))
		}
	}
	log.Info("removed overlayd's datapath from this node", zap.Any("deleted", ch.Deleted), zap.Int("iptablesChanges", n))
	return errors.Join(errs...)
}
