package kube

import (
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes/fake"
)

// --subnet-lease-renew-margin: the own Leases are renewed at the latest the
// margin before they expire, and every third of their duration in any case.
func TestRenewEveryHonoursTheMargin(t *testing.T) {
	for _, tc := range []struct {
		duration, margin, want time.Duration
	}{
		{24 * time.Hour, 0, 8 * time.Hour},
		{24 * time.Hour, time.Hour, 8 * time.Hour}, // flanneld's default margin: the third comes first
		{24 * time.Hour, 20 * time.Hour, 4 * time.Hour},
		{24 * time.Hour, 1439 * time.Minute, time.Minute},
		{9 * time.Second, 0, 3 * time.Second},
	} {
		l := &leaseMode{m: &manager{cfg: Config{LeaseDuration: tc.duration, RenewMargin: tc.margin}}}
		if got := l.renewEvery(); got != tc.want {
			t.Errorf("duration %s, margin %s: renew every %s, want %s", tc.duration, tc.margin, got, tc.want)
		}
	}
}

func TestRenewMarginMustBeShorterThanTheLease(t *testing.T) {
	// The fake client is only a non-nil Config.Client: New talks to no API.
	_, err := New(Config{Client: fake.NewClientset(), NodeName: "n", Net: mustNet(t, `{"Network": "10.244.0.0/16", "LeaseMode": "lease"}`),
		LeaseDuration: time.Hour, RenewMargin: time.Hour})
	if err == nil || !strings.Contains(err.Error(), "RenewMargin 1h0m0s must be shorter than the LeaseDuration 1h0m0s") {
		t.Fatalf("New: %v", err)
	}
}
