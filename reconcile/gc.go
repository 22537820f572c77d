package reconcile

import (
	"os"
	"runtime/debug"
)

// GCPercent is the garbage collector's target for overlayd: collect when
// the heap has grown by half rather than doubled. A node agent's live heap
// is small (about 5 MiB for the lease store at 5000 nodes), so collecting
// more often costs little CPU and keeps resident memory, which every node
// pays, down.
const GCPercent = 50

// TuneGC applies GCPercent unless the GOGC environment variable is set.
func TuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(GCPercent)
	}
}
