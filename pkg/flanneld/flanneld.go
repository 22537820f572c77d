// Package flanneld knows what flanneld leaves on a node, so that overlayd
// can wait while it runs and then take its place without cutting pods off:
// its process, its iptables chains and the protocol of its routes. Its
// devices are the backends' business (backend.Adopter).
package flanneld

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/overlayd/overlayd/pkg/rules"
)

// Chains are flanneld's iptables chains (v0.28's traffic manager), each
// jumped to from its built-in chain, in iptables and ip6tables.
var Chains = []rules.Chain{
	{Table: "nat", Parent: "POSTROUTING", Name: "FLANNEL-POSTRTG"},
	{Table: "filter", Parent: "FORWARD", Name: "FLANNEL-FWD"},
}

// Tables are flanneld's nftables tables ("EnableNFTables": true).
var Tables = []rules.Table{
	{Family: knftables.IPv4Family, Name: "flannel-ipv4"},
	{Family: knftables.IPv6Family, Name: "flannel-ipv6"},
}

// RouteProtocol is the protocol of flanneld's routes: it sets none, so the
// kernel records "boot".
const RouteProtocol = unix.RTPROT_BOOT

// ProcDir is where Running looks for processes.
var ProcDir = "/proc"

// Running returns the pid of a flanneld process in this process's network
// namespace, 0 if there is none. It sees only the processes of its own PID
// namespace: in a pod, that takes hostPID (the shipped DaemonSet sets it).
func Running() (int, error) {
	self, err := netnsOf(filepath.Join(ProcDir, "self"))
	if err != nil {
		return 0, fmt.Errorf("reading this process's network namespace: %w", err)
	}
	entries, err := os.ReadDir(ProcDir)
	if err != nil {
		return 0, fmt.Errorf("listing processes: %w", err)
	}
	me := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == me {
			continue
		}
		dir := filepath.Join(ProcDir, e.Name())
		comm, err := os.ReadFile(filepath.Join(dir, "comm"))
		if err != nil || string(bytes.TrimSpace(comm)) != "flanneld" {
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
