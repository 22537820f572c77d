package backend

import (
	"errors"
	"fmt"

	"github.com/overlayd/overlayd/pkg/metrics"
)

// SkipError says a peer is skipped, and why: Reason is a label value of
// overlayd_peers_skipped_total. With Family set, only that family of the
// peer is skipped: what the backend added for the other stays.
type SkipError struct {
	Reason string
	Family string // "IPv4" or "IPv6" for a skip of one family; "" for the whole peer
	Err    error
}

func (e *SkipError) Error() string {
	if e.Family != "" {
		return e.Reason + " (" + e.Family + " only): " + e.Err.Error()
	}
	return e.Reason + ": " + e.Err.Error()
}
func (e *SkipError) Unwrap() error { return e.Err }

// Skip returns a *SkipError.
func Skip(reason, format string, args ...any) error {
	return &SkipError{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// SkipFamily returns a *SkipError for one family of a peer.
func SkipFamily(f Family, reason, format string, args ...any) error {
	return &SkipError{Reason: reason, Family: f.String(), Err: fmt.Errorf(format, args...)}
}

// Reasons a backend skips a peer.
var (
	SkipBadBackendData = metrics.NewSkipReason("bad_backend_data")
	SkipNotOnLink      = metrics.NewSkipReason("not_on_link")
	SkipUnknownBackend = metrics.NewSkipReason("unknown_backend")
	// SkipMissingFamily: the peer has no subnet or public address of a
	// family this node runs (e.g. an IPv4-only node in a dual-stack
	// cluster); the families it has are reached.
	SkipMissingFamily = metrics.NewSkipReason("missing_family")
)

// IsSkip reports whether err says the peer is to be skipped.
func IsSkip(err error) (*SkipError, bool) {
	var s *SkipError
	ok := errors.As(err, &s)
	return s, ok
}
