package wireguard

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// configure makes the WireGuard device wgName (the kernel's device name, or
// the userspace device's control socket name) match want through wgctrl,
// the same for both datapaths: the device's peers are diffed against what
// it has, stale peers removed, and only what differs is sent, so the
// sessions of unchanged peers go on. It reports whether it changed anything.
//
// A peer no longer wanted that still sends lingers (stale): see lingering.
func configure(c *wgctrl.Client, wgName string, want *DeviceSpec, stale lingering, now time.Time) (bool, error) {
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
	claimed := map[netip.Prefix]bool{}
	for _, p := range want.Peers {
		for _, a := range p.AllowedIPs {
			claimed[a] = true
		}
	}
	havePeers := make(map[wgtypes.Key]wgtypes.Peer, len(have.Peers))
	for _, p := range have.Peers {
		havePeers[p.PublicKey] = p
		if _, ok := want.Peers[p.PublicKey]; ok {
			delete(stale, p.PublicKey)
			continue
		}
		if stale.keep(p, claimed, now) {
			continue
		}
		// Removals first: a new key of a peer takes over the old one's
		// allowed IPs in the same call.
		cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: p.PublicKey, Remove: true})
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

// A peer that switched to another backend publishes no key any more, but
// it still reaches this node with wireguard (the backend this node
// publishes) until it sees this node switch too: removed at once, its
// packets would be dropped. So a peer no longer wanted stays on the device,
// receive-only (traffic to its subnet is routed by the backend it now
// publishes), while it still sends: it goes once nothing has arrived from it
// for lingerQuiet, or after lingerMax, at the first pass after that. A
// peer's old key after a key change sends nothing and goes at the next
// pass; its allowed IPs moved to the new key, so it goes at once.
const (
	lingerQuiet = 3 * time.Second
	lingerMax   = 2 * time.Minute
)

// lingering are the unwanted peers still on a device, by key.
type lingering map[wgtypes.Key]*staleSeen

type staleSeen struct {
	since, lastRx time.Time
	rx            int64
}

// keep reports whether the unwanted peer p stays for now. One whose allowed
// IPs are all claimed by wanted peers (its subnet moved to another key)
// could carry nothing: it goes.
func (l lingering) keep(p wgtypes.Peer, claimed map[netip.Prefix]bool, now time.Time) bool {
	free := 0
	for _, n := range p.AllowedIPs {
		if pfx, ok := prefixOf(n); ok && !claimed[pfx] {
			free++
		}
	}
	if free == 0 {
		delete(l, p.PublicKey)
		return false
	}
	s := l[p.PublicKey]
	if s == nil {
		s = &staleSeen{since: now, lastRx: now, rx: p.ReceiveBytes}
		l[p.PublicKey] = s
	} else if p.ReceiveBytes != s.rx {
		s.rx, s.lastRx = p.ReceiveBytes, now
	}
	if now.Sub(s.lastRx) < lingerQuiet && now.Sub(s.since) < lingerMax {
		return true
	}
	delete(l, p.PublicKey)
	return false
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
