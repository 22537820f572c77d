package cluster

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ProcessMemory returns VmRSS and VmHWM (KiB) of a process, e.g. an agent.
func ProcessMemory(pid int) (rssKiB, hwmKiB int64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			rssKiB, _ = strconv.ParseInt(f[1], 10, 64)
		case "VmHWM:":
			hwmKiB, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	return rssKiB, hwmKiB, nil
}

// ProcessRSSParts returns what a process's VmRSS is made of (KiB): its
// anonymous memory (heap, stacks) and its file-backed pages (for a Go
// program, the parts of its binary it has touched).
func ProcessRSSParts(pid int) (anonKiB, fileKiB int64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "RssAnon:":
			anonKiB, _ = strconv.ParseInt(f[1], 10, 64)
		case "RssFile:":
			fileKiB, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	return anonKiB, fileKiB, nil
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
