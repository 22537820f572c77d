package lab

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// lockDir holds one lock file per live lab, <prefix>-<id>.lock, flock'ed by
// the lab's process for as long as the lab lives. It is a fixed path, not
// $TMPDIR, so every process agrees on it.
var lockDir = "/run/overlayd-lab"

const netnsDir = "/run/netns"

// reserveID picks a fresh lab id and returns its lock file, locked. The
// file is created under a temporary name, locked, then hard-linked into
// place: the link fails if the id is taken, and no one ever sees the final
// name unlocked while its lab lives.
func reserveID(prefix string) (string, *os.File, error) {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return "", nil, fmt.Errorf("lab: creating %s: %w", lockDir, err)
	}
	for range 20 {
		b := make([]byte, 3)
		if _, err := rand.Read(b); err != nil {
			return "", nil, err
		}
		id := hex.EncodeToString(b)
		if inUse(prefix, id) {
			continue
		}
		f, err := os.CreateTemp(lockDir, ".reserve-*")
		if err != nil {
			return "", nil, fmt.Errorf("lab: creating lock file: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			os.Remove(f.Name())
			return "", nil, fmt.Errorf("lab: locking %s: %w", f.Name(), err)
		}
		err = os.Link(f.Name(), lockPath(prefix, id))
		os.Remove(f.Name())
		if err == nil {
			return id, f, nil
		}
		f.Close()
		if !errors.Is(err, fs.ErrExist) {
			return "", nil, fmt.Errorf("lab: reserving id: %w", err)
		}
	}
	return "", nil, errors.New("lab: no free id after 20 tries")
}

// inUse reports whether any namespace already carries prefix-id.
func inUse(prefix, id string) bool {
	entries, _ := os.ReadDir(netnsDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-"+id+"-") {
			return true
		}
	}
	return false
}

func lockPath(prefix, id string) string {
	return filepath.Join(lockDir, prefix+"-"+id+".lock")
}

func writeLockDir(f *os.File, dir string) error {
	if _, err := f.WriteString(dir + "\n"); err != nil {
		return fmt.Errorf("lab: writing lock file: %w", err)
	}
	return nil
}

// releaseID removes the lock file before unlocking it, so a sweeper that
// acquires the lock afterwards finds nothing of this lab left.
func releaseID(prefix, id string, f *os.File) {
	os.Remove(lockPath(prefix, id))
	f.Close()
}

// Sweep removes what crashed labs with this prefix left behind: namespaces
// named <prefix>-<id>-* whose lab no longer holds its lock (after killing
// any process still inside them), their temporary directories and lock
// files. Live labs, in this process or another, are left alone. It returns
// the names of the namespaces removed.
func Sweep(prefix string) ([]string, error) {
	prefix = strings.TrimSuffix(prefix, "-")
	if !prefixRE.MatchString(prefix) {
		return nil, fmt.Errorf("lab: sweep prefix %q: want 1-12 letters or digits", prefix)
	}
	nameRE := regexp.MustCompile(`^` + regexp.QuoteMeta(prefix) + `-([0-9a-f]{6})-`)
	lockRE := regexp.MustCompile(`^` + regexp.QuoteMeta(prefix) + `-([0-9a-f]{6})\.lock$`)

	byID := map[string][]string{}
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("lab: listing %s: %w", netnsDir, err)
	}
	for _, e := range entries {
		if m := nameRE.FindStringSubmatch(e.Name()); m != nil {
			byID[m[1]] = append(byID[m[1]], e.Name())
		}
	}
	locks, _ := os.ReadDir(lockDir)
	for _, e := range locks {
		if m := lockRE.FindStringSubmatch(e.Name()); m != nil {
			if _, ok := byID[m[1]]; !ok {
				byID[m[1]] = nil
			}
		}
	}

	var removed []string
	var errs []error
	for id, names := range byID {
		lock, dir, live := probeLock(prefix, id)
		if live {
			continue
		}
		sort.Sort(sort.Reverse(sort.StringSlice(names)))
		for _, name := range names {
			h := &Host{NS: name}
			if err := h.delete(); err != nil {
				errs = append(errs, err)
				continue
			}
			removed = append(removed, name)
		}
		if dir != "" && strings.Contains(filepath.Base(dir), prefix+"-"+id+"-") {
			os.RemoveAll(dir)
		}
		if lock != nil {
			os.Remove(lockPath(prefix, id))
			lock.Close()
		}
	}
	sort.Strings(removed)
	return removed, errors.Join(errs...)
}

// probeLock tries to take a lab's lock. If the lab is alive it fails and
// live is true. Otherwise the lock is returned held (nil when there is no
// lock file at all), with the directory the lab recorded in it.
func probeLock(prefix, id string) (lock *os.File, dir string, live bool) {
	f, err := os.OpenFile(lockPath(prefix, id), os.O_RDWR, 0)
	if err != nil {
		return nil, "", false
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, "", true
	}
	data, _ := os.ReadFile(f.Name())
	return f, strings.TrimSpace(string(data)), false
}
