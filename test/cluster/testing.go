package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/overlayd/overlayd/test/controlplane"
	"github.com/overlayd/overlayd/test/lab"
)

// New builds a cluster for a test or benchmark, as Start does, failing it
// on error. Everything is removed when it ends, also when it fails; on
// failure the tails of the agents' and the control plane's logs are logged.
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	c, err := Prepare(opts)
	if err != nil {
		t.Fatal(err)
	}
	// The test forms register their own cleanups and failure logs; lab.New
	// also sends the lab's progress to t.Logf unless Options.Logf is set.
	c.startControlPlane = func(o controlplane.Options) (*controlplane.ControlPlane, error) {
		return controlplane.StartT(t, o), nil
	}
	c.startLab = func(o lab.Options) (*lab.Lab, error) { return lab.New(t, o), nil }
	if err := c.build(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c
}

// Eventually polls cond every DefaultPollInterval until it holds or the
// timeout passes, then fails the test with the condition's last
// explanation.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() (ok bool, detail string)) {
	t.Helper()
	if err := Poll(context.Background(), timeout, DefaultPollInterval, cond); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}
