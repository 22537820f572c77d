package bench

import (
	"math"
	"testing"
)

func TestParseHeapTop(t *testing.T) {
	out := `File: overlayd
Type: inuse_space
Time: 2026-12-01 14:50:00 UTC
Showing nodes accounting for 21.50MB, 93.48% of 23MB total
Dropped 40 nodes (cum <= 0.12MB)
      flat  flat%   sum%        cum   cum%
      12MB 52.17% 52.17%       12MB 52.17%  github.com/overlayd/overlayd/subnet/kube.(*podCIDRMode).nodeRecord
`
	h, err := parseHeapTop(out)
	if err != nil {
		t.Fatal(err)
	}
	if h.InuseMiB != 23 || h.Top[:13] != "Showing nodes" {
		t.Errorf("got %.2f MiB, top %q", h.InuseMiB, h.Top)
	}
	h, err = parseHeapTop("Showing nodes accounting for 900kB, 90% of 1024kB total\n")
	if err != nil || math.Abs(h.InuseMiB-1) > 1e-9 {
		t.Errorf("kB: %v %v", h.InuseMiB, err)
	}
	if _, err := parseHeapTop("no profile"); err == nil {
		t.Error("want an error for output without a table")
	}
}
