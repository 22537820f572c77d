package rules

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/test/netnstest"
)

// Test namespaces are named ovlC-<pid>-<n>-<role>, so parallel engineers and
// parallel runs never collide.
const nsPrefix = "ovlC-"

type testNS struct {
	name   string
	handle netns.NsHandle
}

// newNS creates a network namespace that is deleted when the test ends,
// also on failure.
func newNS(t testing.TB, role string) *testNS {
	t.Helper()
	name, h := netnstest.New(t, nsPrefix, role)
	ns := &testNS{name: name, handle: h}
	ns.ip(t, "link", "set", "lo", "up")
	return ns
}

// do runs f on an OS thread switched into the namespace. Processes that f
// starts (iptables, iptables-restore) are forked from that thread and
// inherit its namespace, and sockets f opens belong to it.
func (n *testNS) do(t testing.TB, f func() error) error {
	t.Helper()
	return kernel.InNamespace(n.handle, f)
}

// exec runs a command inside the namespace via `ip netns exec` — a path
// independent of do(), so test observations do not rely on the mechanism
// under test.
func (n *testNS) exec(t testing.TB, args ...string) string {
	t.Helper()
	return run(t, append([]string{"ip", "netns", "exec", n.name}, args...)...)
}

func (n *testNS) ip(t testing.TB, args ...string) string {
	t.Helper()
	return run(t, append([]string{"ip", "-n", n.name}, args...)...)
}

func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// backend names an iptables variant and its binaries.
type backend struct{ name, save, save6, cmd, cmd6, restore string }

var backends = []backend{
	{name: "nft", save: "iptables-nft-save", save6: "ip6tables-nft-save", cmd: "iptables-nft", cmd6: "ip6tables-nft", restore: "iptables-nft-restore"},
	{name: "legacy", save: "iptables-legacy-save", save6: "ip6tables-legacy-save", cmd: "iptables-legacy", cmd6: "ip6tables-legacy", restore: "iptables-legacy-restore"},
}

// forEachBackend runs test once per iptables variant installed here.
func forEachBackend(t *testing.T, test func(t *testing.T, b backend)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			if _, err := exec.LookPath(b.cmd); err != nil {
				t.Skipf("%s is not installed", b.cmd)
			}
			test(t, b)
		})
	}
}

var (
	countersRe = regexp.MustCompile(`\[\d+:\d+\]`)
)

// cleanSave drops iptables-save's dated comment lines and, unless
// keepCounters, the packet counters, leaving only the ruleset.
func cleanSave(out string, keepCounters bool) string {
	var b strings.Builder
	for _, l := range strings.Split(out, "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if !keepCounters {
			l = countersRe.ReplaceAllString(l, "[0:0]")
		}
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String()
}

// save returns one table of the namespace's IPv4 or IPv6 ruleset.
func (n *testNS) save(t testing.TB, b backend, v6 bool, table string) string {
	t.Helper()
	cmd := b.save
	if v6 {
		cmd = b.save6
	}
	return cleanSave(n.exec(t, cmd, "-t", table), false)
}

// hostRuleset is the host's own iptables, every variant and family. The
// tests never change it; guardHost proves that.
func hostRuleset(t testing.TB) string {
	t.Helper()
	var all strings.Builder
	for _, b := range backends {
		for _, cmd := range []string{b.save, b.save6} {
			if _, err := exec.LookPath(cmd); err != nil {
				continue
			}
			out, err := exec.Command(cmd).Output()
			if err != nil {
				t.Fatalf("%s on the host: %v", cmd, err)
			}
			fmt.Fprintf(&all, "== %s\n%s", cmd, cleanSave(string(out), false))
		}
	}
	return all.String()
}

// guardHost fails the test if the host's iptables differ at its end from
// its start.
func guardHost(t testing.TB) {
	t.Helper()
	before := hostRuleset(t)
	t.Cleanup(func() {
		if after := hostRuleset(t); after != before {
			t.Errorf("the host's iptables changed during the test:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	})
}

// veth connects two namespaces with a veth pair and addresses both ends.
func veth(t testing.TB, a *testNS, aName, aAddr string, b *testNS, bName, bAddr string) {
	t.Helper()
	a.ip(t, "link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b.name)
	addr := func(n *testNS, a, dev string) {
		args := []string{"addr", "add", a, "dev", dev}
		if strings.Contains(a, ":") {
			args = append(args, "nodad") // usable at once, no duplicate detection wait
		}
		n.ip(t, args...)
	}
	addr(a, aAddr, aName)
	addr(b, bAddr, bName)
	a.ip(t, "link", "set", aName, "up")
	b.ip(t, "link", "set", bName, "up")
}

// listenUDP opens a UDP socket on addr inside the namespace.
func (n *testNS) listenUDP(t testing.TB, addr string) *net.UDPConn {
	t.Helper()
	var conn *net.UDPConn
	err := n.do(t, func() error {
		var err error
		conn, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		return err
	})
	if err != nil {
		t.Fatalf("listening on %s in %s: %v", addr, n.name, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// sendUDP sends one datagram from a fresh socket (a fresh source port, so a
// new conntrack entry and a fresh NAT decision) inside the namespace.
func (n *testNS) sendUDP(t testing.TB, to, payload string) {
	t.Helper()
	err := n.do(t, func() error {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(to)))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte(payload))
		return err
	})
	if err != nil {
		t.Fatalf("sending to %s from %s: %v", to, n.name, err)
	}
}

// sourceSeen sends payload from n to `to` until the listener receives it
// (the first datagram may wait for neighbour resolution), and returns the
// source address the receiver saw.
func sourceSeen(t testing.TB, from *testNS, to string, recv *net.UDPConn, payload string) netip.Addr {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	buf := make([]byte, 2048)
	for time.Now().Before(deadline) {
		from.sendUDP(t, to, payload)
		_ = recv.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		for {
			k, src, err := recv.ReadFromUDPAddrPort(buf)
			if err != nil {
				break // nothing (more) yet: send again
			}
			if string(buf[:k]) == payload {
				return src.Addr().Unmap()
			}
		}
	}
	t.Fatalf("%q from %s to %s never arrived", payload, from.name, to)
	return netip.Addr{}
}

// received drains what the listener already holds, without waiting.
func received(t testing.TB, recv *net.UDPConn) []string {
	t.Helper()
	var got []string
	buf := make([]byte, 2048)
	_ = recv.SetReadDeadline(time.Now())
	for {
		k, _, err := recv.ReadFromUDPAddrPort(buf)
		if err != nil {
			return got
		}
		got = append(got, string(bytes.Clone(buf[:k])))
	}
}
