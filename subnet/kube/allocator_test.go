package kube

import (
	"hash/fnv"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/overlayd/overlayd/pkg/ip"
)

// The allocator's decisions, without an API server.

var allocNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// family4 is 10.0.0.0/16 in /24s, SubnetMin 10.0.1.0 .. SubnetMax 10.0.8.0.
func family4() addressFamily {
	return addressFamily{familyIPv4, pfx("10.0.0.0/16"), 24, pfx("10.0.1.0/24"), pfx("10.0.8.0/24")}
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func mustAllocator(t *testing.T, f addressFamily, node string) *allocator {
	t.Helper()
	a, err := newAllocator(f, node)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// held is a well-formed Lease of subnet s, created at minute created, held
// by holder until expiresIn from allocNow; holder "" is released.
func held(s, holder string, created int, expiresIn time.Duration) knownLease {
	p := pfx(s)
	l := knownLease{name: leaseName(p), subnet: p, holder: holder, created: allocNow.Add(time.Duration(created-1000) * time.Minute)}
	if holder != "" {
		l.expiry = allocNow.Add(expiresIn)
	}
	return l
}

func names(ls []knownLease) []string {
	var out []string
	for _, l := range ls {
		out = append(out, l.name)
	}
	return out
}

// freeList collects every subnet the allocation offers.
func freeList(t *testing.T, al allocation) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	for p, err := range al.free {
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// startIndex is where the search of node starts among count subnets: fnv-1a of the name.
func startIndex(node string, count uint64) uint64 {
	h := fnv.New64a()
	h.Write([]byte(node))
	return h.Sum64() % count
}

func TestAllocatorKeepsTheEarliestOwnLeaseAndReleasesTheRest(t *testing.T) {
	a := mustAllocator(t, family4(), "self")
	leases := []knownLease{
		held("10.0.5.0/24", "self", 3, time.Hour),   // an extra in range (a retried create)
		held("10.0.2.0/24", "self", 1, -time.Hour),  // the earliest: kept even though expired
		held("10.0.9.0/24", "self", 2, time.Hour),   // outside SubnetMax
		held("10.0.3.0/24", "other", 0, time.Hour),  // another node's
		held("10.0.4.0/25", "self", 4, time.Hour),   // not of the subnet length
		held("fd00::/64", "self", 0, time.Hour),     // another family
		{name: "subnet-garbage", holder: "self"},    // malformed: only its name counts
		held("10.0.6.0/24", "", 5, -10*time.Minute), // released
	}
	al := a.plan(leases, allocNow)
	if al.keep == nil || al.keep.name != leaseName(pfx("10.0.2.0/24")) {
		t.Fatalf("keep = %+v, want the Lease of 10.0.2.0/24", al.keep)
	}
	want := []string{leaseName(pfx("10.0.9.0/24")), leaseName(pfx("10.0.5.0/24")), leaseName(pfx("10.0.4.0/25"))}
	if got := names(al.extras); !slices.Equal(got, want) {
		t.Errorf("extras %v, want %v (in claim order)", got, want)
	}
	// Own Leases are never taken over from oneself, nor counted as expiring.
	if got := names(al.expired); !slices.Equal(got, []string{leaseName(pfx("10.0.6.0/24"))}) {
		t.Errorf("expired %v, want only the released one", got)
	}
	if want := allocNow.Add(time.Hour); !al.nextExpiry.Equal(want) {
		t.Errorf("nextExpiry %s, want %s (other's 10.0.3.0/24)", al.nextExpiry, want)
	}
}

func TestAllocatorReleasesAnOwnLeaseOutOfRange(t *testing.T) {
	a := mustAllocator(t, family4(), "self")
	al := a.plan([]knownLease{held("10.0.200.0/24", "self", 0, time.Hour)}, allocNow)
	if al.keep != nil {
		t.Errorf("kept %+v outside SubnetMin..SubnetMax", al.keep)
	}
	if got := names(al.extras); !slices.Equal(got, []string{leaseName(pfx("10.0.200.0/24"))}) {
		t.Errorf("extras %v, want the out-of-range Lease", got)
	}
	// Its subnet is still held: not offered again.
	if free := freeList(t, al); len(free) != 8 {
		t.Errorf("free %v, want all 8 subnets of the range", free)
	}
}

func TestAllocatorSearchStartsAtTheNodesPlaceAndWraps(t *testing.T) {
	f := family4()
	for _, node := range []string{"node-a", "node-b", "worker-17.example.com", ""} {
		a := mustAllocator(t, f, node)
		free := freeList(t, a.plan(nil, allocNow))
		if len(free) != 8 {
			t.Fatalf("%s: %d free subnets, want 8", node, len(free))
		}
		start := startIndex(node, 8)
		for i, p := range free {
			want, _ := ip.NthSubnet(f.network, 24, 1+(start+uint64(i))%8)
			if p != want {
				t.Fatalf("%s: free[%d] = %s, want %s (start %d, wrapping after SubnetMax)", node, i, p, want, start)
			}
		}
	}
	// Different names, different places (the point of the hash).
	if startIndex("node-a", 8) == startIndex("node-b", 8) && startIndex("node-a", 8) == startIndex("worker-17.example.com", 8) {
		t.Error("three node names start at the same place")
	}
}

func TestAllocatorSkipsHeldAndTakenSubnets(t *testing.T) {
	f := family4()
	a := mustAllocator(t, f, "self")
	leases := []knownLease{
		held("10.0.2.0/23", "other", 0, time.Hour), // overlaps 10.0.2.0/24 and 10.0.3.0/24
		held("10.0.5.0/24", "", 1, 0),              // released, still there: not free
		held("10.0.7.0/24", "gone", 2, -time.Hour), // expired: taken over, not created
		// A malformed Lease bearing 10.0.8.0/24's name: the name is taken.
		{name: leaseName(pfx("10.0.8.0/24")), holder: "rogue", created: allocNow},
	}
	al := a.plan(leases, allocNow)
	got := freeList(t, al)
	slices.SortFunc(got, netip.Prefix.Compare)
	want := []netip.Prefix{pfx("10.0.1.0/24"), pfx("10.0.4.0/24"), pfx("10.0.6.0/24")}
	if !slices.Equal(got, want) {
		t.Errorf("free %v, want %v", got, want)
	}
	if got := names(al.expired); !slices.Equal(got, []string{leaseName(pfx("10.0.5.0/24")), leaseName(pfx("10.0.7.0/24"))}) {
		t.Errorf("expired %v", got)
	}
}

func TestAllocatorOrdersExpiredLongestFirst(t *testing.T) {
	a := mustAllocator(t, family4(), "self")
	leases := []knownLease{
		held("10.0.1.0/24", "n1", 0, -time.Minute),
		held("10.0.2.0/24", "n2", 1, -10*time.Minute),
		held("10.0.3.0/24", "", 2, 0), // released: no expiry, first
		held("10.0.4.0/24", "n4", 3, time.Minute),
		held("10.0.5.0/24", "n5", 4, 10*time.Second),
		held("10.0.6.0/24", "self", 5, -time.Hour),
		held("10.0.100.0/24", "n7", 6, -time.Hour), // out of range: not ours to take
	}
	al := a.plan(leases, allocNow)
	want := []string{leaseName(pfx("10.0.3.0/24")), leaseName(pfx("10.0.2.0/24")), leaseName(pfx("10.0.1.0/24"))}
	if got := names(al.expired); !slices.Equal(got, want) {
		t.Errorf("expired %v, want %v", got, want)
	}
	if want := allocNow.Add(10 * time.Second); !al.nextExpiry.Equal(want) {
		t.Errorf("nextExpiry %s, want %s", al.nextExpiry, want)
	}
}

func TestAllocatorExhaustedRangeWaitsForTheNextExpiry(t *testing.T) {
	f := addressFamily{familyIPv4, pfx("10.0.0.0/16"), 24, pfx("10.0.1.0/24"), pfx("10.0.2.0/24")}
	a := mustAllocator(t, f, "self")
	al := a.plan([]knownLease{
		held("10.0.1.0/24", "n1", 0, 30*time.Second),
		held("10.0.2.0/24", "n2", 1, 5*time.Second),
	}, allocNow)
	if free := freeList(t, al); len(free) != 0 || len(al.expired) != 0 || al.keep != nil {
		t.Fatalf("free %v expired %v keep %v in a full range", free, names(al.expired), al.keep)
	}
	if got := al.retryIn(allocNow); got != 5*time.Second+100*time.Millisecond {
		t.Errorf("retryIn %s, want just after the next expiry (5s)", got)
	}
	// Far expiries and none: look again within a minute anyway.
	far := a.plan([]knownLease{held("10.0.1.0/24", "n1", 0, time.Hour), held("10.0.2.0/24", "n2", 1, time.Hour)}, allocNow)
	if got := far.retryIn(allocNow); got != time.Minute {
		t.Errorf("retryIn %s with an expiry an hour away, want 1m", got)
	}
	if got := (allocation{}).retryIn(allocNow); got != time.Minute {
		t.Errorf("retryIn %s without any expiry, want 1m", got)
	}
}

func TestAllocatorSingleSubnetRange(t *testing.T) {
	f := addressFamily{familyIPv4, pfx("10.251.0.0/16"), 24, pfx("10.251.7.0/24"), pfx("10.251.7.0/24")}
	for _, node := range []string{"a", "b", "c"} {
		a := mustAllocator(t, f, node)
		if free := freeList(t, a.plan(nil, allocNow)); !slices.Equal(free, []netip.Prefix{pfx("10.251.7.0/24")}) {
			t.Errorf("%s: free %v, want the one subnet", node, free)
		}
		taken := a.plan([]knownLease{held("10.251.7.0/24", "x", 0, time.Minute)}, allocNow)
		if free := freeList(t, taken); len(free) != 0 || !taken.nextExpiry.Equal(allocNow.Add(time.Minute)) {
			t.Errorf("%s: free %v nextExpiry %s once taken", node, free, taken.nextExpiry)
		}
	}
}

func TestAllocatorIPv6(t *testing.T) {
	f := addressFamily{familyIPv6, pfx("fd00:10:254::/56"), 64, pfx("fd00:10:254::/64"), pfx("fd00:10:254:ff::/64")}
	a := mustAllocator(t, f, "self")
	leases := []knownLease{
		held("10.0.1.0/24", "self", 0, time.Hour), // the IPv4 Lease: not this family's to keep or release
		held("fd00:10:254:7::/64", "self", 1, time.Hour),
		held("fd00:10:254:8::/63", "other", 2, -time.Second), // covers :8 and :9
	}
	al := a.plan(leases, allocNow)
	if al.keep == nil || al.keep.subnet != pfx("fd00:10:254:7::/64") || len(al.extras) != 0 {
		t.Errorf("keep %+v extras %v, want the own IPv6 Lease and nothing to release", al.keep, names(al.extras))
	}
	if len(al.expired) != 0 {
		t.Errorf("expired %v: a /63 is not of the subnet length, so not in range", names(al.expired))
	}
	// From the node's place around the range, without the held :7, :8 and :9.
	var want []netip.Prefix
	start := startIndex("self", 256)
	for i := range uint64(256) {
		p, _ := ip.NthSubnet(f.network, 64, (start+i)%256)
		if n := (start + i) % 256; n < 7 || n > 9 {
			want = append(want, p)
		}
	}
	if free := freeList(t, al); !slices.Equal(free, want) {
		t.Errorf("free: %d subnets starting %v, want %d starting %v", len(free), free[:min(3, len(free))], len(want), want[:3])
	}
}

func TestNewAllocatorRefusesARangeOutsideTheNetwork(t *testing.T) {
	f := family4()
	f.min = pfx("10.9.0.0/24")
	if _, err := newAllocator(f, "self"); err == nil {
		t.Error("SubnetMin outside Network accepted")
	}
}
