//go:build wgkernel

package wireguard

import (
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/overlayd/overlayd/pkg/kernel"
)

// The kernel datapath needs a kernel with WireGuard, so this test is built
// only with -tags wgkernel (make test-wgkernel) and is not counted in the
// ordinary run. On a kernel without WireGuard it fails, saying so: it
// never passes without having created a kernel device.
func TestKernelDatapath(t *testing.T) {
	nodes := newPair(t, `{"Type":"wireguard","Datapath":"kernel"}`)
	a, b := nodes[0], nodes[1]
	if err := kernel.InNamespace(a.h, func() error {
		err := netlink.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: probeDevice}})
		if err == nil {
			l, _ := netlink.LinkByName(probeDevice)
			netlink.LinkDel(l)
		}
		return err
	}); err != nil {
		t.Fatalf("this kernel has no WireGuard, so the kernel datapath cannot be tested here (creating a wireguard device: %v)", err)
	}
	a.apply(b)
	b.apply(a)
	for _, n := range nodes {
		l, err := netlink.NewHandleAt(n.h)
		if err != nil {
			t.Fatal(err)
		}
		link, err := l.LinkByName(DeviceName)
		l.Close()
		if err != nil || link.Type() != "wireguard" {
			t.Fatalf("%s: %s is %v (%v); want a kernel wireguard device", n.node.Name, DeviceName, link, err)
		}
	}
	if err := a.ping(b); err != nil {
		t.Fatal(err)
	}
	if err := b.ping(a); err != nil {
		t.Fatal(err)
	}
}
