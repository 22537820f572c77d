package logging

import (
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"k8s.io/klog/v2"
)

// client-go logs through klog; those lines must come out of overlayd's
// logger, named, structured, at the right level.
func TestKlogGoesThroughZap(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	RouteKlog(zap.New(core))
	defer klog.ClearLogger()

	klog.InfoS("watch restarted", "resource", "nodes")
	klog.ErrorS(nil, "request failed", "code", 503)
	klog.V(4).InfoS("chatty detail") // below info: dropped

	entries := logs.All()
	if len(entries) != 2 {
		t.Fatalf("got %d entries, want 2: %+v", len(entries), entries)
	}
	first := entries[0]
	if first.LoggerName != "client-go" || first.Message != "watch restarted" || first.ContextMap()["resource"] != "nodes" {
		t.Errorf("info entry %+v %v", first.Entry, first.ContextMap())
	}
	if second := entries[1]; second.Level != zap.ErrorLevel || !strings.Contains(second.Message, "request failed") {
		t.Errorf("error entry %+v", second.Entry)
	}
}

func TestCheck(t *testing.T) {
	for _, bad := range [][2]string{{"loud", "console"}, {"info", "xml"}, {"", "json"}} {
		if _, err := Check(bad[0], bad[1]); err == nil {
			t.Errorf("Check(%q, %q) accepted", bad[0], bad[1])
		}
	}
	for _, lvl := range Levels {
		for _, f := range Formats {
			if _, err := New(lvl, f, Klog{}); err != nil {
				t.Errorf("New(%q, %q): %v", lvl, f, err)
			}
		}
	}
}

// flanneld's -v: a verbosity that sets the level (unless --log-level was
// given), lets client-go's klog lines of that verbosity through, and klog's
// other flags go to klog; a bad value names the flag.
func TestKlogVerbosity(t *testing.T) {
	defer func() { _ = Klog{}.apply() }() // leave klog as other tests expect it
	log, err := New("info", "json", Klog{Verbosity: 2, SetsLevel: true})
	if err != nil {
		t.Fatal(err)
	}
	if !log.Core().Enabled(zapcore.DebugLevel) || !log.Core().Enabled(zapcore.Level(-2)) || log.Core().Enabled(zapcore.Level(-3)) {
		t.Error("-v 2 does not log at verbosities 1 and 2 only")
	}
	if !klog.V(2).Enabled() || klog.V(3).Enabled() {
		t.Error("-v 2 did not reach klog")
	}
	log, err = New("warn", "json", Klog{Verbosity: 2})
	if err != nil {
		t.Fatal(err)
	}
	if log.Core().Enabled(zapcore.InfoLevel) {
		t.Error("--log-level warn given with -v: the level is not warn")
	}
	if _, err := New("info", "json", Klog{VModule: "leases=x"}); err == nil || !strings.Contains(err.Error(), "-vmodule") {
		t.Errorf("bad -vmodule: %v", err)
	}
	if _, err := New("info", "json", Klog{BacktraceAt: "nowhere"}); err == nil || !strings.Contains(err.Error(), "-log_backtrace_at") {
		t.Errorf("bad -log_backtrace_at: %v", err)
	}
	if _, err := New("info", "json", Klog{VModule: "reflector=4", BacktraceAt: "reflector.go:100"}); err != nil {
		t.Errorf("good klog flags: %v", err)
	}
}
