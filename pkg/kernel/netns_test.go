package kernel

import (
	"errors"
	"fmt"
	"net"
	"os"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/overlayd/overlayd/test/netnstest"
)

// mustCurrentNS returns the namespace of the thread the caller runs on.
func mustCurrentNS(t *testing.T) netns.NsHandle {
	t.Helper()
	h, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func TestInNamespace(t *testing.T) {
	name, target := netnstest.New(t, "ovlK-", "inns")
	netnstest.IP(t, name, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
	before := mustCurrentNS(t)

	var inside netns.NsHandle
	var probeErr error
	err := InNamespace(target, func() error {
		var err error
		inside, err = netns.Get()
		_, probeErr = net.InterfaceByName("probe0") // a socket opened here is in target
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer inside.Close()
	if !inside.Equal(target) {
		t.Errorf("fn ran in %s, want %s", inside, target)
	}
	if probeErr != nil {
		t.Errorf("fn does not see the namespace's device: %v", probeErr)
	}
	if after := mustCurrentNS(t); !after.Equal(before) {
		t.Errorf("caller's namespace changed: %s -> %s", before, after)
	}

	errFn := errors.New("fn failed")
	if err := InNamespace(target, func() error { return errFn }); !errors.Is(err, errFn) {
		t.Errorf("err = %v, want fn's error", err)
	}
}

// A thread fn moved elsewhere itself is moved back before it is reused: with
// netns.None() fn runs in the current namespace and may leave it.
func TestInNamespaceThreadsComeBack(t *testing.T) {
	_, target := netnstest.New(t, "ovlK-", "back")
	before := mustCurrentNS(t)
	for range 20 {
		err := InNamespace(netns.None(), func() error {
			cur, err := netns.Get()
			if err != nil {
				return err
			}
			defer cur.Close()
			if !cur.Equal(before) {
				return fmt.Errorf("fn started in %s, want the current namespace %s", cur, before)
			}
			return netns.Set(target)
		})
		if err != nil {
			t.Fatal(err)
		}
		// Whichever thread runs this goroutine now, maybe the one fn moved,
		// is in the original namespace.
		if cur := mustCurrentNS(t); !cur.Equal(before) {
			t.Fatalf("a thread left in %s was reused", cur)
		}
	}
}

func TestInNamespaceRefusesNonNamespace(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ran := false
	err = InNamespace(netns.NsHandle(f.Fd()), func() error { ran = true; return nil })
	if err == nil || ran {
		t.Fatalf("err = %v, ran = %v: want an error before fn runs", err, ran)
	}
}
