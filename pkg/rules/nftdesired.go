package rules

import (
	"crypto/sha256"
	"fmt"
	"net/netip"
	"strings"

	"sigs.k8s.io/knftables"
)

// The nftables form of overlayd's rules: one table of its own, inet
// overlayd, whose base chains hook in beside everyone else's (kube-proxy's,
// a policy engine's, the iptables-nft tables): a packet passes only if no
// base chain at a hook drops it, so nothing of theirs is ever weakened.
const (
	NFTTable        = "overlayd"
	NFTMasqChain    = "postrouting"
	NFTForwardChain = "forward"
	NFTIngressChain = "input"
	// nftIngressCounter counts what the ingress filter drops.
	nftIngressCounter = "ingress_dropped"
)

// nftPeerSet is the set of the peers' public addresses of a family.
func nftPeerSet(v6 bool) *knftables.Set {
	if v6 {
		return &knftables.Set{Name: "peers6", Type: "ipv6_addr"}
	}
	return &knftables.Set{Name: "peers4", Type: "ipv4_addr"}
}

// nftChain is one chain of ours with its wanted rules.
type nftChain struct {
	chain *knftables.Chain
	rules []nftRule
}

// nftRule is a rule and its comment. The comment carries a short hash of the
// rule, so that the comments alone (all nft lists of a rule besides its
// handle) tell whether a chain holds exactly the wanted rules.
type nftRule struct {
	rule, comment string
}

func newNFTRule(rule, what string) nftRule {
	sum := sha256.Sum256([]byte(rule))
	return nftRule{rule: rule, comment: fmt.Sprintf("%s [%x]", what, sum[:4])}
}

// nftDesired is the wanted content of the table: the chains of the features
// on, with the rules of both families; nil: no table at all.
func nftDesired(cfg Config) []nftChain {
	families := []struct {
		ip              string
		network, subnet netip.Prefix
		multicast       netip.Prefix
	}{
		{"ip", cfg.Network, cfg.Subnet, multicastV4},
		{"ip6", cfg.IPv6Network, cfg.IPv6Subnet, multicastV6},
	}
	masq := "masquerade"
	if !cfg.NoRandomFully {
		masq = "masquerade fully-random"
	}
	var masqRules, fwdRules []nftRule
	// masqRules: the order matters, the first match decides (masqRules in
	// desired.go says why each is there).
	masqRules = append(masqRules, newNFTRule("meta mark & "+kubeProxyMasqBit+" == "+kubeProxyMasqBit+" return", commentKubeMark))
	for _, f := range families {
		if !f.network.IsValid() {
			continue
		}
		n, s, mc := f.network.Masked().String(), f.subnet.Masked().String(), f.multicast.String()
		masqRules = append(masqRules,
			newNFTRule(fmt.Sprintf("%s saddr %s %s daddr %s return", f.ip, n, f.ip, n), commentInCluster),
			newNFTRule(fmt.Sprintf("%s saddr != %s %s daddr %s return", f.ip, n, f.ip, s), commentToLocalPods),
			newNFTRule(fmt.Sprintf("%s saddr %s %s daddr != %s %s", f.ip, n, f.ip, mc, masq), commentLeaving),
			newNFTRule(fmt.Sprintf("%s saddr != %s %s daddr %s %s", f.ip, n, f.ip, n, masq), commentEntering),
		)
		fwdRules = append(fwdRules,
			newNFTRule(fmt.Sprintf("%s saddr %s accept", f.ip, n), commentFromPods),
			newNFTRule(fmt.Sprintf("%s daddr %s accept", f.ip, n), commentToPods),
		)
	}
	if len(fwdRules) == 0 {
		return nil // no family on
	}
	var out []nftChain
	if len(cfg.Ingress.Ports) > 0 {
		ports := make([]string, len(cfg.Ingress.Ports))
		for i, p := range cfg.Ingress.Ports {
			ports[i] = fmt.Sprint(p)
		}
		var in []nftRule
		for _, f := range families {
			if !f.network.IsValid() {
				continue
			}
			in = append(in, newNFTRule(fmt.Sprintf("%s saddr != @%s udp dport { %s } counter name %s drop",
				f.ip, nftPeerSet(f.ip == "ip6").Name, strings.Join(ports, ", "), nftIngressCounter), commentNotFromPeers))
		}
		out = append(out, nftChain{chain: &knftables.Chain{Name: NFTIngressChain, Type: knftables.PtrTo(knftables.FilterType),
			Hook: knftables.PtrTo(knftables.InputHook), Priority: knftables.PtrTo(knftables.FilterPriority)}, rules: in})
	}
	if cfg.IPMasq {
		out = append(out, nftChain{chain: &knftables.Chain{Name: NFTMasqChain, Type: knftables.PtrTo(knftables.NATType),
			Hook: knftables.PtrTo(knftables.PostroutingHook), Priority: knftables.PtrTo(knftables.SNATPriority)}, rules: masqRules})
	}
	if cfg.ForwardRules {
		out = append(out, nftChain{chain: &knftables.Chain{Name: NFTForwardChain, Type: knftables.PtrTo(knftables.FilterType),
			Hook: knftables.PtrTo(knftables.ForwardHook), Priority: knftables.PtrTo(knftables.FilterPriority)}, rules: fwdRules})
	}
	return out
}
