package rules

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/overlayd/overlayd/pkg/ip"
)

// Our chains. Their names are how overlayd recognises its own rules after a
// restart: everything in them, and every rule jumping to them, is ours.
const (
	MasqChain    = "OVERLAYD-POSTRTG" // nat table, jumped to from POSTROUTING
	ForwardChain = "OVERLAYD-FWD"     // filter table, jumped to from FORWARD
	IngressChain = "OVERLAYD-INPUT"   // filter table, jumped to first from INPUT
)

// kubeProxyMasqMark is the bit kube-proxy sets (its default
// --iptables-masquerade-bit=14) on packets it will masquerade itself in
// KUBE-POSTROUTING. Those are left to kube-proxy.
const (
	kubeProxyMasqBit  = "0x00004000"
	kubeProxyMasqMark = "0x4000/0x4000"
)

// Comments on every rule, so `iptables -S` tells an operator who wrote a rule
// and why.
const (
	commentMasqJump     = "overlayd masquerade rules"
	commentForwardJump  = "overlayd forward rules"
	commentKubeMark     = "overlayd: kube-proxy masquerades its marked traffic"
	commentInCluster    = "overlayd: no masquerade inside the cluster network"
	commentToLocalPods  = "overlayd: keep client address towards local pods"
	commentLeaving      = "overlayd: masquerade pod traffic leaving the cluster network"
	commentEntering     = "overlayd: masquerade outside traffic to pods on other nodes"
	commentFromPods     = "overlayd: forward traffic from the pod network"
	commentToPods       = "overlayd: forward traffic to the pod network"
	commentIngressJump  = "overlayd encapsulated traffic only from peers"
	commentFromPeers    = "overlayd: encapsulated traffic from a peer"
	commentNotFromPeers = "overlayd: encapsulated traffic from anyone else"
)

// Config is the traffic-rule part of overlayd's desired state.
type Config struct {
	// Network and IPv6Network are the cluster (pod) networks. An invalid
	// (zero) prefix switches the family off, and its rules are removed.
	Network, IPv6Network netip.Prefix
	// Subnet and IPv6Subnet are this node's lease; needed with IPMasq.
	Subnet, IPv6Subnet netip.Prefix
	// IPMasq masquerades pod traffic leaving the cluster network (--ip-masq).
	IPMasq bool
	// ForwardRules accepts forwarded traffic to and from the pod network
	// (--iptables-forward-rules).
	ForwardRules bool
	// NoRandomFully masquerades without --random-fully
	// (--ip-masq-fully-random-disable); without it, --random-fully is used
	// where iptables has it.
	NoRandomFully bool
	// NFTables keeps the rules in nftables instead of iptables
	// (EnableNFTables), for Modes.
	NFTables bool
	// Ingress lets encapsulated traffic into this node only from its
	// peers; no Ports: no filter.
	Ingress Ingress
}

// Ingress is the encapsulated traffic this node receives: the UDP ports of
// its tunnels (vxlan's, udp's) and the public addresses that may send to
// them, every current peer's. Anyone else on the underlay could otherwise
// inject packets into the pod network by addressing a node's tunnel.
type Ingress struct {
	Ports   []int
	Senders []netip.Addr
}

// senders returns the senders of one family.
func (in Ingress) senders(v6 bool) []netip.Addr { return familyOf(in.Senders, v6) }

// familyOf returns the addresses of one family.
func familyOf(addrs []netip.Addr, v6 bool) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		if a.Is6() == v6 && !a.Is4In6() {
			out = append(out, a)
		}
	}
	return out
}

// Validate checks the prefixes: the right family, and each lease inside its
// network. Errors name the offending field.
func (c Config) Validate() error {
	var errs []error
	check := func(netName, subName string, network, subnet netip.Prefix, v6 bool) {
		family := "IPv4"
		if v6 {
			family = "IPv6"
		}
		isFamily := func(p netip.Prefix) bool {
			if v6 {
				return p.Addr().Is6() && !p.Addr().Is4In6()
			}
			return p.Addr().Is4()
		}
		if network.IsValid() && !isFamily(network) {
			errs = append(errs, fmt.Errorf("rules: Config.%s %s is not an %s prefix", netName, network, family))
			return
		}
		switch {
		case subnet.IsValid() && !isFamily(subnet):
			errs = append(errs, fmt.Errorf("rules: Config.%s %s is not an %s prefix", subName, subnet, family))
		case subnet.IsValid() && !network.IsValid():
			errs = append(errs, fmt.Errorf("rules: Config.%s %s is set but Config.%s is not", subName, subnet, netName))
		case subnet.IsValid() && !ip.Covers(network, subnet):
			errs = append(errs, fmt.Errorf("rules: Config.%s %s is not inside Config.%s %s", subName, subnet, netName, network))
		case c.IPMasq && network.IsValid() && !subnet.IsValid():
			errs = append(errs, fmt.Errorf("rules: Config.%s is required with IPMasq when Config.%s is set", subName, netName))
		}
	}
	check("Network", "Subnet", c.Network, c.Subnet, false)
	check("IPv6Network", "IPv6Subnet", c.IPv6Network, c.IPv6Subnet, true)
	return errors.Join(errs...)
}

// chainDef is one chain of ours and the built-in chain that jumps to it.
type chainDef struct {
	table, parent, name string
	jumpComment         string
	// first puts the jump at the top of parent: a chain that only drops
	// (never accepts) must see the packets before anything accepts them.
	first bool
}

var (
	masqDef    = chainDef{table: "nat", parent: "POSTROUTING", name: MasqChain, jumpComment: commentMasqJump}
	forwardDef = chainDef{table: "filter", parent: "FORWARD", name: ForwardChain, jumpComment: commentForwardJump}
	ingressDef = chainDef{table: "filter", parent: "INPUT", name: IngressChain, jumpComment: commentIngressJump, first: true}
	// ownedChains lists every chain overlayd may have created, so a chain
	// whose feature is off is found and removed, also after a restart.
	ownedChains = []chainDef{masqDef, forwardDef, ingressDef}
)

// chainState is the wanted content of one of our chains.
type chainState struct {
	chainDef
	jump  []string   // the rule in parent that jumps to our chain
	rules [][]string // the rules of our chain, in order
}

// key identifies the wanted content; a changed key means a changed config,
// not drift.
func (s *chainState) key() string {
	var b strings.Builder
	b.WriteString(joinRule(s.jump))
	for _, r := range s.rules {
		b.WriteByte('\n')
		b.WriteString(joinRule(r))
	}
	return b.String()
}

func jumpRule(d chainDef) []string {
	return []string{"-m", "comment", "--comment", d.jumpComment, "-j", d.name}
}

// masqRules: the order matters, the first match decides.
//  1. kube-proxy-marked traffic is kube-proxy's to masquerade;
//  2. pod to pod (any pod in the cluster network) keeps its source, so peers
//     and policy see the real pod IP;
//  3. outside clients reaching this node's pods keep their address;
//  4. pods talking outside the cluster network are masqueraded, except
//     multicast: it has no reply flow for NAT to reverse, and its receivers
//     need the real sender;
//  5. outside (or host) traffic towards pods on other nodes is masqueraded, so
//     the replies come back through this node.
func masqRules(network, subnet, multicast netip.Prefix, randomFully bool) [][]string {
	n, s, mc := network.Masked().String(), subnet.Masked().String(), multicast.String()
	masq := []string{"-j", "MASQUERADE"}
	if randomFully {
		masq = append(masq, "--random-fully")
	}
	comment := func(c string) []string { return []string{"-m", "comment", "--comment", c} }
	cat := func(parts ...[]string) []string {
		var out []string
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	return [][]string{
		cat([]string{"-m", "mark", "--mark", kubeProxyMasqMark}, comment(commentKubeMark), []string{"-j", "RETURN"}),
		cat([]string{"-s", n, "-d", n}, comment(commentInCluster), []string{"-j", "RETURN"}),
		cat([]string{"!", "-s", n, "-d", s}, comment(commentToLocalPods), []string{"-j", "RETURN"}),
		cat([]string{"-s", n, "!", "-d", mc}, comment(commentLeaving), masq),
		cat([]string{"!", "-s", n, "-d", n}, comment(commentEntering), masq),
	}
}

func forwardRules(network netip.Prefix) [][]string {
	n := network.Masked().String()
	return [][]string{
		{"-s", n, "-m", "comment", "--comment", commentFromPods, "-j", "ACCEPT"},
		{"-d", n, "-m", "comment", "--comment", commentToPods, "-j", "ACCEPT"},
	}
}

// ingressRules: a peer's encapsulated traffic returns to INPUT (whatever
// decides there still does); anyone else's is dropped and counted.
func ingressRules(ports []int, set string) [][]string {
	list := make([]string, len(ports))
	for i, p := range ports {
		list[i] = strconv.Itoa(p)
	}
	dports := []string{"-p", "udp", "-m", "multiport", "--dports", strings.Join(list, ",")}
	return [][]string{
		append(slices.Clone(dports), "-m", "set", "--match-set", set, "src", "-m", "comment", "--comment", commentFromPeers, "-j", "RETURN"),
		append(slices.Clone(dports), "-m", "comment", "--comment", commentNotFromPeers, "-j", "DROP"),
	}
}

var (
	multicastV4 = netip.MustParsePrefix("224.0.0.0/4")
	multicastV6 = netip.MustParsePrefix("ff00::/8")
)

// desired returns, for one family, the wanted state of each owned chain;
// nil means the chain must not exist. cfg must be valid.
func desired(cfg Config, v6, randomFully bool) map[string]*chainState {
	network, subnet, mc := cfg.Network, cfg.Subnet, multicastV4
	if v6 {
		network, subnet, mc = cfg.IPv6Network, cfg.IPv6Subnet, multicastV6
	}
	out := map[string]*chainState{MasqChain: nil, ForwardChain: nil, IngressChain: nil}
	if !network.IsValid() {
		return out
	}
	if len(cfg.Ingress.Ports) > 0 {
		out[IngressChain] = &chainState{chainDef: ingressDef, jump: jumpRule(ingressDef), rules: ingressRules(cfg.Ingress.Ports, peerSetName(v6))}
	}
	if cfg.IPMasq {
		out[MasqChain] = &chainState{chainDef: masqDef, jump: jumpRule(masqDef), rules: masqRules(network, subnet, mc, randomFully)}
	}
	if cfg.ForwardRules {
		out[ForwardChain] = &chainState{chainDef: forwardDef, jump: jumpRule(forwardDef), rules: forwardRules(network)}
	}
	return out
}
