package lab

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// Matrix is the reachability of every ordered pair of pods over one
// address family.
type Matrix struct {
	Pods  []*Pod
	IPv6  bool      // pinged over ICMPv6, the pods' IP6; else ICMPv4, their IP
	Reach [][]bool  // Reach[i][j]: Pods[i] got an echo reply from Pods[j]
	Errs  [][]error // why a pair failed
}

// Pair is an ordered pair of pods and why it failed.
type Pair struct {
	From, To *Pod
	Err      error
}

func (p Pair) String() string { return fmt.Sprintf("%s -> %s: %v", p.From.Name, p.To.Name, p.Err) }

// CheckMatrix pings every ordered pair of distinct pods concurrently over
// IPv4; each pair has until timeout to get one echo reply, so a path that
// is still converging counts once it works within the timeout.
func CheckMatrix(ctx context.Context, pods []*Pod, timeout time.Duration) *Matrix {
	return CheckMatrixFamily(ctx, pods, timeout, false)
}

// CheckMatrixFamily is CheckMatrix over IPv6 (ICMPv6 to each pod's IP6) if
// v6, else over IPv4. A pair whose destination has no address of the
// family fails, saying so.
func CheckMatrixFamily(ctx context.Context, pods []*Pod, timeout time.Duration, v6 bool) *Matrix {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	m := &Matrix{Pods: pods, IPv6: v6, Reach: make([][]bool, len(pods)), Errs: make([][]error, len(pods))}
	for i := range pods {
		m.Reach[i] = make([]bool, len(pods))
		m.Errs[i] = make([]error, len(pods))
	}
	sem := make(chan struct{}, 128) // raw sockets open at once
	var wg sync.WaitGroup
	for i, from := range pods {
		for j, to := range pods {
			if i == j {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				err := from.pingPod(ctx, to, v6)
				m.Reach[i][j], m.Errs[i][j] = err == nil, err
			}()
		}
	}
	wg.Wait()
	return m
}

// pingPod pings the pod's address of one family.
func (h *Host) pingPod(ctx context.Context, to *Pod, v6 bool) error {
	dst := to.Addr(v6)
	if !dst.IsValid() {
		return fmt.Errorf("pod %s has no %s address", to.Name, familyName(v6))
	}
	return h.Ping(ctx, dst)
}

func familyName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// Failed returns the pairs that did not reach each other.
func (m *Matrix) Failed() []Pair {
	var failed []Pair
	for i := range m.Pods {
		for j := range m.Pods {
			if i != j && !m.Reach[i][j] {
				failed = append(failed, Pair{From: m.Pods[i], To: m.Pods[j], Err: m.Errs[i][j]})
			}
		}
	}
	return failed
}

// OK reports whether every pair reached each other.
func (m *Matrix) OK() bool { return len(m.Failed()) == 0 }

// String is a table: rows send (with the address of the family pinged),
// columns answer.
func (m *Matrix) String() string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprint(w, "from \\ to") // the rows' addresses tell the family
	for _, p := range m.Pods {
		fmt.Fprintf(w, "\t%s", p.Name)
	}
	fmt.Fprintln(w)
	for i, from := range m.Pods {
		fmt.Fprintf(w, "%s (%s, %s)", from.Name, text(from.Addr(m.IPv6)), from.Node.Name)
		for j := range m.Pods {
			cell := "ok"
			switch {
			case i == j:
				cell = "-"
			case !m.Reach[i][j]:
				cell = "FAIL"
			}
			fmt.Fprintf(w, "\t%s", cell)
		}
		fmt.Fprintln(w)
	}
	w.Flush()
	return b.String()
}

// text is an address, or "none".
func text(a netip.Addr) string {
	if !a.IsValid() {
		return "none"
	}
	return a.String()
}
