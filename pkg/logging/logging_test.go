package logging

import (
	"strings"
	"testing"

	"go.uber.org/zap"
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
			if _, err := New(lvl, f); err != nil {
				t.Errorf("New(%q, %q): %v", lvl, f, err)
			}
		}
	}
}
