package nodes

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// A cluster's temporary directory (logs, images, the nodes' roots) is
// named after its prefix and holds a lock file, locked for as long as the
// cluster lives, so that Sweep can tell a crashed run's directory from a
// live one's.

const dirLockName = "lock"

// tempDirPattern names a cluster's temporary directory.
func tempDirPattern(prefix string) string { return "overlayd-nodes-" + prefix + "-" }

// lockDir creates and locks dir's lock file; closing the file releases it.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, dirLockName), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", f.Name(), err)
	}
	return f, nil
}

// sweepDirs removes the temporary directories of crashed clusters with
// this prefix: those whose lock nobody holds (a directory without a lock
// file yet is left alone for a minute: its cluster may be starting).
func sweepDirs(prefix string) ([]string, error) {
	dirs, err := filepath.Glob(filepath.Join(os.TempDir(), tempDirPattern(prefix)+"*"))
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, d := range dirs {
		f, err := os.OpenFile(filepath.Join(d, dirLockName), os.O_RDWR, 0)
		if err != nil {
			if fi, serr := os.Stat(d); serr != nil || time.Since(fi.ModTime()) < time.Minute {
				continue
			}
		} else {
			held := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil
			f.Close()
			if held {
				continue
			}
		}
		if err := os.RemoveAll(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, d)
	}
	return removed, errors.Join(errs...)
}
