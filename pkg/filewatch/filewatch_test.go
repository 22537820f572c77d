package filewatch

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// configMapDir lays out a directory the way the kubelet writes a ConfigMap
// volume: the file is a symlink into ..data, itself a symlink to a
// timestamped directory that an update replaces atomically.
func configMapDir(t *testing.T, content string) (dir string, update func(string)) {
	dir = t.TempDir()
	gen := 0
	update = func(content string) {
		gen++
		ts := filepath.Join(dir, "..2026_"+string(rune('a'+gen)))
		if err := os.Mkdir(ts, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ts, "net-conf.json"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	update(content)
	if err := os.Symlink("..data/net-conf.json", filepath.Join(dir, "net-conf.json")); err != nil {
		t.Fatal(err)
	}
	return dir, update
}

func TestWatchSeesConfigMapSwap(t *testing.T) {
	dir, update := configMapDir(t, "v1")
	path := filepath.Join(dir, "net-conf.json")
	got := make(chan string, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The poll interval is far beyond the test's deadline: only inotify can
	// deliver the change in time.
	go Watch(ctx, path, []byte("v1"), time.Hour, func(b []byte) { got <- string(b) }, zaptest.NewLogger(t))

	deadline := time.After(10 * time.Second)
	for _, want := range []string{"v2", "v3"} {
		update(want)
		select {
		case g := <-got:
			if g != want {
				t.Fatalf("got %q, want %q", g, want)
			}
		case <-deadline:
			t.Fatalf("change to %q not reported", want)
		}
	}
	// Rewriting the same content is not a change.
	update("v3")
	update("v4")
	select {
	case g := <-got:
		if g != "v4" {
			t.Fatalf("got %q after identical rewrite, want only v4", g)
		}
	case <-deadline:
		t.Fatal("change to v4 not reported")
	}
}

func TestWatchPollsAndSurvivesMissingFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "net-conf.json")
	got := make(chan string, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Watch(ctx, path, []byte("old"), 20*time.Millisecond, func(b []byte) { got <- string(b) }, zaptest.NewLogger(t))
	// The file is missing for a while: nothing is reported. Then it appears
	// (written atomically, as every real writer of a config does).
	tmp := filepath.Join(dir, ".tmp")
	if err := os.WriteFile(tmp, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	select {
	case g := <-got:
		if g != "new" {
			t.Fatalf("got %q", g)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("change not reported")
	}
}

// A file written all the time in the same directory (a log, 200 writes a
// second) neither holds a change back nor delays it past maxDelay: the
// rename over the watched file is read within a second of its event.
func TestWatchIgnoresABusyDirectory(t *testing.T) {
	for _, layout := range []string{"plain file", "ConfigMap"} {
		t.Run(layout, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "net-conf.json")
			var update func(string)
			if layout == "ConfigMap" {
				dir, update = configMapDir(t, "v1")
				path = filepath.Join(dir, "net-conf.json")
			} else {
				if err := os.WriteFile(path, []byte("v1"), 0o644); err != nil {
					t.Fatal(err)
				}
				update = func(c string) {
					tmp := filepath.Join(dir, ".net-conf.json.tmp")
					if err := os.WriteFile(tmp, []byte(c), 0o644); err != nil {
						t.Fatal(err)
					}
					if err := os.Rename(tmp, path); err != nil {
						t.Fatal(err)
					}
				}
			}
			ctx, cancel := context.WithCancel(context.Background())
			var writer sync.WaitGroup
			// The writer is gone before t.TempDir's cleanup removes dir.
			defer func() { cancel(); writer.Wait() }()
			writer.Add(1)
			go func() { // the busy neighbour
				defer writer.Done()
				f, err := os.Create(filepath.Join(dir, "agent.log"))
				if err != nil {
					return
				}
				defer f.Close()
				tick := time.NewTicker(5 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-tick.C:
						f.WriteString("a log line\n")
					}
				}
			}()
			got := make(chan string, 10)
			go Watch(ctx, path, []byte("v1"), time.Hour, func(b []byte) { got <- string(b) }, zaptest.NewLogger(t))
			start := time.Now()
			update("v2")
			select {
			case g := <-got:
				if g != "v2" {
					t.Fatalf("got %q", g)
				}
				t.Logf("read %s after the change", time.Since(start).Round(time.Millisecond))
			case <-time.After(10 * time.Second):
				t.Fatal("the change was never read while another file of the directory was being written")
			}
		})
	}
}
