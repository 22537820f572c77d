package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/overlayd/overlayd/test/bench"
)

// TestSummaryDualStack: the summary sets each dual-stack figure beside the
// IPv4-only one of the same peer count, with the ratio, and marks the
// cold start and VmRSS ratios against the 1.5x target, met or not.
func TestSummaryDualStack(t *testing.T) {
	size := func(family string, peers int, converged float64, rssMiB int64) bench.ConvergenceSize {
		return bench.ConvergenceSize{
			Family: family, Peers: peers, ConvergedSec: converged, ColdStartsSec: []float64{converged}, ColdStartCPUSec: converged / 2,
			VmRSSKiB: rssMiB * 1024, VmHWMKiB: rssMiB * 1024, NoopReconcileMs: 10, LoadAverage: "1.00",
		}
	}
	s := summary{start: time.Now(), load: "1.00 1.00 1.00", convergence: &bench.Convergence{Sizes: []bench.ConvergenceSize{
		size(bench.FamilyIPv4, 1000, 1.0, 40),
		size(bench.FamilyIPv4, 5000, 2.0, 50),
		size(bench.FamilyDual, 1000, 1.6, 48),
		size(bench.FamilyDual, 5000, 2.5, 80),
	}}}
	var out bytes.Buffer
	s.print(&out)
	text := out.String()
	t.Log(text)
	for _, want := range []string{
		`N = 1000: cold start to all entries \(median\)\s+1\.00 s\s+1\.60 s\s+1\.60x  \[target <= 1\.5x: NOT MET\]`,
		`N = 1000: agent CPU to all entries \(median\)\s+0\.50 s\s+0\.80 s\s+1\.60x\n`, // a figure, no target
		`N = 1000: agent VmRSS\s+40\.0 MiB\s+48\.0 MiB\s+1\.20x  \[target <= 1\.5x: met\]`,
		`N = 5000: cold start to all entries \(median\)\s+2\.00 s\s+2\.50 s\s+1\.25x  \[target <= 1\.5x: met\]`,
		`N = 5000: agent VmRSS\s+50\.0 MiB\s+80\.0 MiB\s+1\.60x  \[target <= 1\.5x: NOT MET\]`,
		`N = 5000\s+N = 1000 dual-stack`, // the per-size table: IPv4 columns, then dual-stack ones
	} {
		if !regexp.MustCompile(want).MatchString(text) {
			t.Errorf("the summary has no line matching %q", want)
		}
	}

	// Without dual-stack figures there is nothing to compare.
	s.convergence.Sizes = s.convergence.Sizes[:2]
	out.Reset()
	s.print(&out)
	if strings.Contains(out.String(), "Dual-stack beside IPv4-only") {
		t.Errorf("a comparison without dual-stack figures:\n%s", out.String())
	}
}

// TestSummaryBesideFlanneld: the table has a column per agent and peer
// count, an agent that never programmed every peer says how far it got,
// and each peer count's batch changes are marked against flanneld's.
func TestSummaryBesideFlanneld(t *testing.T) {
	agent := func(name string, cold, add, del float64) bench.AgentFigures {
		return bench.AgentFigures{Agent: name, Programmed: true, ColdStartSec: cold, CPUSec: cold, RSSKiB: 40 << 10, AddSec: add, DeleteSec: del}
	}
	stuck := bench.AgentFigures{Agent: "flanneld", Entries: "0 routes, 0 neighbours, 0 FDB entries"}
	s := summary{start: time.Now(), load: "1.00 1.00 1.00", besideFlanneld: &bench.BesideFlanneld{LimitSec: 120, BatchChange: 100, Sizes: []bench.BesideFlanneldSize{
		{Peers: 1000, Agents: []bench.AgentFigures{agent("overlayd", 0.25, 0.10, 0.10), agent("flanneld", 1.30, 0.20, 0.20)}},
		{Peers: 5000, Agents: []bench.AgentFigures{agent("overlayd", 0.60, 0.30, 0.10), agent("flanneld", 2.00, 0.20, 0.20)}},
		{Peers: 10000, Agents: []bench.AgentFigures{agent("overlayd", 1.00, 0.30, 0.30), stuck}},
	}}}
	var out bytes.Buffer
	s.print(&out)
	text := out.String()
	t.Log(text)
	for _, want := range []string{
		`overlayd 1000\s+flanneld 1000\s+overlayd 5000\s+flanneld 5000\s+overlayd 10000\s+flanneld 10000`,
		`start -> every peer's route, neighbour, FDB entry\s+0\.25 s\s+1\.30 s\s+0\.60 s\s+2\.00 s\s+1\.00 s\s+not programmed \(0 routes, 0 neighbours, 0 FDB entries\)`,
		`100 Nodes added -> programmed\s+0\.10 s\s+0\.20 s\s+0\.30 s\s+0\.20 s\s+0\.30 s\s+-`,
		`N = 1000: added 0\.10 s vs 0\.20 s, deleted 0\.10 s vs 0\.20 s  \[target: no slower than flanneld: met\]`,
		`N = 5000: added 0\.30 s vs 0\.20 s, deleted 0\.10 s vs 0\.20 s  \[target: no slower than flanneld: NOT MET\]`,
		`N = 10000: flanneld did not program every peer within 120 s`,
	} {
		if !regexp.MustCompile(want).MatchString(text) {
			t.Errorf("the summary has no line matching %q", want)
		}
	}
}
