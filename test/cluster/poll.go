package cluster

import (
	"context"
	"fmt"
	"time"
)

// Poll calls cond every interval until it holds, timeout passes or ctx
// ends; the error carries cond's last explanation. cond is always asked
// once more after the deadline has passed, so a slow check still gets the
// whole timeout.
func Poll(ctx context.Context, timeout, interval time.Duration, cond func() (ok bool, detail string)) error {
	deadline := time.Now().Add(timeout)
	timer := time.NewTimer(interval)
	defer timer.Stop()
	for {
		ok, detail := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not true after %s: %s", timeout, detail)
		}
		timer.Reset(interval)
		select {
		case <-ctx.Done():
			if detail == "" {
				return ctx.Err()
			}
			return fmt.Errorf("%w (last: %s)", ctx.Err(), detail)
		case <-timer.C:
		}
	}
}
