package backend

import (
	"errors"
	"fmt"

	"github.com/overlayd/overlayd/pkg/metrics"
)

// SkipError says a peer is skipped, and why: Reason is a label value of
// overlayd_peers_skipped_total.
type SkipError struct {
	Reason string
	Err    error
}

func (e *SkipError) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *SkipError) Unwrap() error { return e.Err }

// Skip returns a *SkipError.
func Skip(reason, format string, args ...any) error {
	return &SkipError{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// Reasons a backend skips a peer.
var (
	SkipBadBackendData = metrics.NewSkipReason("bad_backend_data")
	SkipNotOnLink      = metrics.NewSkipReason("not_on_link")
	SkipUnknownBackend = metrics.NewSkipReason("unknown_backend")
)

// IsSkip reports whether err says the peer is to be skipped.
func IsSkip(err error) (*SkipError, bool) {
	var s *SkipError
	ok := errors.As(err, &s)
	return s, ok
}
