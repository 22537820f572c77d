package kernel

import (
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap/zaptest"
)

// The kernel announces the underlay again when a vxlan device is made on
// it; the watch takes that for no change. An MTU change and a link going
// down are changes.
func TestWatchedLinkAnnouncements(t *testing.T) {
	ns, name := underlayNS(t)
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	idx := eth0.Attrs().Index
	updates := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{Namespace: &ns}); err != nil {
		t.Fatal(err)
	}
	seen, err := seedWatchedLinks(ns, func(i int) bool { return i == idx })
	if err != nil {
		t.Fatal(err)
	}
	next := func(what string) netlink.LinkUpdate {
		t.Helper()
		for {
			select {
			case u := <-updates:
				if int(u.Index) == idx {
					return u
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("no event of eth0 for %s", what)
			}
		}
	}

	r, err := NewReconcilerAt(ns, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	mustApply(t, r, vxlanState())
	ipIn(t, name, "link", "set", "eth0", "mtu", "1400")
	announced := 0
	for {
		u := next("its MTU change")
		if u.Attrs().MTU == 1400 {
			if !seen.changed(u) {
				t.Error("eth0's MTU change taken for no change")
			}
			break
		}
		announced++
		if seen.changed(u) {
			t.Errorf("eth0 announced unchanged after the vxlan device was made (%+v), taken for a change", factsOf(u.Link))
		}
	}
	t.Logf("eth0 announced unchanged %d times", announced)
	ipIn(t, name, "link", "set", "eth0", "down")
	if u := next("going down"); !seen.changed(u) {
		t.Error("eth0 going down taken for no change")
	}
}
