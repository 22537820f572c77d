// Package procs finds other agents on this node by their process name: a
// flanneld to wait for and take over from, or a second overlayd (a surge
// upgrade) to hand the userspace datapath to.
package procs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// Dir is where Find looks for processes.
var Dir = "/proc"

// Find returns the pid of a process named comm, other than this one, in
// this process's network namespace; 0 if there is none. It sees only the
// processes of its own PID namespace: in a pod, that takes hostPID (the
// shipped DaemonSet sets it).
func Find(comm string) (int, error) {
	self, err := netnsOf(filepath.Join(Dir, "self"))
	if err != nil {
		return 0, fmt.Errorf("reading this process's network namespace: %w", err)
	}
	entries, err := os.ReadDir(Dir)
	if err != nil {
		return 0, fmt.Errorf("listing processes: %w", err)
	}
	me := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == me {
			continue
		}
		dir := filepath.Join(Dir, e.Name())
		name, err := os.ReadFile(filepath.Join(dir, "comm"))
		if err != nil || string(bytes.TrimSpace(name)) != comm {
			continue // gone meanwhile, or another program
		}
		ns, err := netnsOf(dir)
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if ns == self {
			return pid, nil
		}
	}
	return 0, nil
}

// netnsOf is the network namespace of the process at dir ("net:[4026531840]").
func netnsOf(dir string) (string, error) {
	return os.Readlink(filepath.Join(dir, "ns", "net"))
}

// Sibling returns the pid of another process of this program (the same
// name) in this process's network namespace, 0 if there is none.
func Sibling() (int, error) {
	comm, err := os.ReadFile(filepath.Join(Dir, "self", "comm"))
	if err != nil {
		return 0, fmt.Errorf("reading this process's name: %w", err)
	}
	return Find(string(bytes.TrimSpace(comm)))
}
