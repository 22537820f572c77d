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

// settleDelay is how long a burst of file events must be quiet before the
// file is read.
const settleDelay = 100 * time.Millisecond

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

	// Events come in bursts (a ConfigMap swap is several renames; an editor
	// writes in steps): read once the burst is over.
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	ticker := time.NewTicker(poll)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-events:
			settle.Reset(settleDelay)
		case <-settle.C:
			check()
		case err := <-errs:
			log.Warn("inotify error; re-reading", zap.String("path", path), zap.Error(err))
			check()
		case <-ticker.C:
			check()
		}
	}
}
