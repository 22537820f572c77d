package wireguard

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// configure makes the WireGuard device wgName (the kernel's device name, or
// the userspace device's control socket name) match want through wgctrl,
// the same for both datapaths: the device's peers are diffed against what
// it has, stale peers removed, and only what differs is sent, so the
// sessions of unchanged peers go on. It reports whether it changed anything.
func configure(c *wgctrl.Client, wgName string, want *DeviceSpec) (bool, error) {
	have, err := c.Device(wgName)
	if err != nil {
		return false, fmt.Errorf("reading WireGuard device %s: %w", want.Name, err)
	}
	var cfg wgtypes.Config
	if have.PrivateKey != want.PrivateKey.k {
		cfg.PrivateKey = &want.PrivateKey.k
	}
	if have.ListenPort != want.Port {
		cfg.ListenPort = &want.Port
	}
	havePeers := make(map[wgtypes.Key]wgtypes.Peer, len(have.Peers))
	for _, p := range have.Peers {
		havePeers[p.PublicKey] = p
		if _, ok := want.Peers[p.PublicKey]; !ok {
			// Removals first: a new key of a peer takes over the old one's
			// allowed IPs in the same call.
			cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: p.PublicKey, Remove: true})
		}
	}
	keys := make([]wgtypes.Key, 0, len(want.Peers))
	for k := range want.Peers {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b wgtypes.Key) int { return slices.Compare(a[:], b[:]) })
	for _, k := range keys {
		p := want.Peers[k]
		if h, ok := havePeers[k]; ok && peerMatches(h, p, want) {
			continue
		}
		psk, keepalive := want.PSK.k, want.Keepalive
		cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{
			PublicKey:                   k,
			PresharedKey:                &psk,
			Endpoint:                    net.UDPAddrFromAddrPort(p.Endpoint),
			PersistentKeepaliveInterval: &keepalive,
			ReplaceAllowedIPs:           true,
			AllowedIPs:                  ipNets(p.AllowedIPs),
		})
	}
	if cfg.PrivateKey == nil && cfg.ListenPort == nil && len(cfg.Peers) == 0 {
		return false, nil
	}
	if err := c.ConfigureDevice(wgName, cfg); err != nil {
		return false, fmt.Errorf("configuring WireGuard device %s (%d peer changes): %w", want.Name, len(cfg.Peers), err)
	}
	return true, nil
}

// peerMatches reports whether the device's peer h is as wanted.
func peerMatches(h wgtypes.Peer, p PeerSpec, dev *DeviceSpec) bool {
	if h.PresharedKey != dev.PSK.k || h.PersistentKeepaliveInterval != dev.Keepalive || h.Endpoint == nil {
		return false
	}
	if ep := h.Endpoint.AddrPort(); netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port()) != p.Endpoint {
		return false
	}
	have := make([]netip.Prefix, 0, len(h.AllowedIPs))
	for _, n := range h.AllowedIPs {
		if pfx, ok := prefixOf(n); ok {
			have = append(have, pfx)
		}
	}
	want := slices.Clone(p.AllowedIPs)
	cmp := func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	}
	slices.SortFunc(have, cmp)
	slices.SortFunc(want, cmp)
	return slices.Equal(have, want)
}

func prefixOf(n net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func ipNets(ps []netip.Prefix) []net.IPNet {
	out := make([]net.IPNet, 0, len(ps))
	for _, p := range ps {
		out = append(out, net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())})
	}
	return out
}
