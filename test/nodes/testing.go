package nodes

import (
	"context"
	"testing"
)

// New starts a cluster for a test, failing it on error, and removes
// everything when the test ends, also when it fails; on failure the tails
// of the nodes' logs are logged.
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	c, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatalf("starting the real-node cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s", c.Logs(4000))
		}
		if err := c.Close(); err != nil {
			t.Errorf("closing the real-node cluster: %v", err)
		}
	})
	return c
}
