package lab

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// lateContext has passed its deadline, but its timer has not cancelled it
// yet: what a loaded machine shows a ping at its deadline.
type lateContext struct {
	context.Context
	deadline time.Time
}

func (c lateContext) Deadline() (time.Time, bool) { return c.deadline, true }

// TestPingStopsAtTheDeadline: a ping past its deadline sends one request
// and gives up, rather than sending on for as long as the context's timer
// is late.
func TestPingStopsAtTheDeadline(t *testing.T) {
	l := New(t, Options{Prefix: testPrefix, Nodes: 1})
	ctx := lateContext{Context: context.Background(), deadline: time.Now()}
	for _, dst := range []netip.Addr{netip.MustParseAddr("198.18.0.99"), netip.MustParseAddr("fd00:198:18::99")} {
		err := l.Nodes[0].Ping(ctx, dst) // nobody has the address
		if err == nil || !strings.Contains(err.Error(), "no echo reply to 1 requests") {
			t.Errorf("ping %s past its deadline: %v; want one request sent", dst, err)
		}
	}
}
