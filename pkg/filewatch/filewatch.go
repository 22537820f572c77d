// Package filewatch reports changes to a file's content, including the way a
// Kubernetes ConfigMap volume changes it: by atomically swapping the
// symlinked "..data" directory, which a watch on the file itself misses.
package filewatch

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
)

// A burst of events about the file (a ConfigMap swap is several renames; an
// editor writes in steps) is read once it has been quiet for settleDelay,
// and at most maxDelay after its first event, however long the burst goes
// on.
const (
	settleDelay = 100 * time.Millisecond
	maxDelay    = time.Second
)

// Watch calls changed with the new content whenever the content of path
// differs from what it was last seen as (initial is the content the caller
// already has). It watches the file's directory with inotify and, as a
// safety net for filesystems without it, also re-reads the file every poll.
// A file that cannot be read is logged and tried again; it never counts as
// a change. Watch returns when ctx ends.
func Watch(ctx context.Context, path string, initial []byte, poll time.Duration, changed func([]byte), log *zap.Logger) {
	last := initial
	check := func() {
		data, err := os.ReadFile(path)
		if err != nil {
			log.Warn("cannot read watched file", zap.String("path", path), zap.Error(err))
			return
		}
		if bytes.Equal(data, last) {
			return
		}
		last = data
		changed(data)
	}

	var events <-chan fsnotify.Event
	var errs <-chan error
	w, err := fsnotify.NewWatcher()
	if err == nil {
		defer w.Close()
		if err = w.Add(filepath.Dir(path)); err == nil {
			events, errs = w.Events, w.Errors
		}
	}
	if err != nil {
		log.Warn("inotify unavailable; polling only", zap.String("path", path), zap.Duration("every", poll), zap.Error(err))
	}

	// A change made before the watch was in place is not lost.
	check()

	// Only events about the file count, and the ConfigMap's "..data" swap:
	// another file of the directory written all the time (a log) must
	// never hold a change back.
	relevant := map[string]bool{filepath.Clean(path): true, filepath.Join(filepath.Dir(path), "..data"): true}
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	var burstStart time.Time // first event of the burst not yet read; zero: none
	ticker := time.NewTicker(poll)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-events:
			if !relevant[filepath.Clean(ev.Name)] {
				continue
			}
			now := time.Now()
			if burstStart.IsZero() {
				burstStart = now
			}
			settle.Reset(min(settleDelay, max(0, maxDelay-now.Sub(burstStart))))
		case <-settle.C:
			burstStart = time.Time{}
			check()
		case err := <-errs:
			log.Warn("inotify error; re-reading", zap.String("path", path), zap.Error(err))
			check()
		case <-ticker.C:
			check()
		}
	}
}
