// Package flanneld knows what flanneld leaves on a node, so that overlayd
// can wait while it runs and then take its place without cutting pods off:
// its process, its iptables chains and the protocol of its routes. Its
// devices are the backends' business (backend.Adopter).
package flanneld

import (
	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/overlayd/overlayd/pkg/procs"
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

// Running returns the pid of a flanneld process in this process's network
// namespace, 0 if there is none (procs.Find).
func Running() (int, error) { return procs.Find("flanneld") }
