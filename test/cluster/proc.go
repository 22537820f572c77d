package cluster

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// ProcessMemory returns VmRSS and VmHWM (KiB) of a process, e.g. an agent.
func ProcessMemory(pid int) (rssKiB, hwmKiB int64, err error) {
	f, err := statusKiB(pid, "VmRSS", "VmHWM")
	return f["VmRSS"], f["VmHWM"], err
}

// ProcessRSSParts returns what a process's VmRSS is made of (KiB): its
// anonymous memory (heap, stacks) and its file-backed pages (for a Go
// program, the parts of its binary it has touched).
func ProcessRSSParts(pid int) (anonKiB, fileKiB int64, err error) {
	f, err := statusKiB(pid, "RssAnon", "RssFile")
	return f["RssAnon"], f["RssFile"], err
}

// statusKiB reads the named fields (in KiB) of /proc/<pid>/status.
func statusKiB(pid int, names ...string) (map[string]int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		if name := strings.TrimSuffix(f[0], ":"); slices.Contains(names, name) {
			out[name], _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	return out, nil
}

// ProcessCPUSeconds is the user+system CPU time a process has used.
func ProcessCPUSeconds(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the parenthesised command; utime and stime are the
	// 14th and 15th of the whole line, in clock ticks (USER_HZ, 100).
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100, nil
}
