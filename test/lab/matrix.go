package lab

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// Matrix is the reachability of every ordered pair of pods.
type Matrix struct {
	Pods  []*Pod
	Reach [][]bool  // Reach[i][j]: Pods[i] got an echo reply from Pods[j]
	Errs  [][]error // why a pair failed
}

// Pair is an ordered pair of pods and why it failed.
type Pair struct {
	From, To *Pod
	Err      error
}

func (p Pair) String() string { return fmt.Sprintf("%s -> %s: %v", p.From.Name, p.To.Name, p.Err) }

// CheckMatrix pings every ordered pair of distinct pods concurrently; each
// pair has until timeout to get one echo reply, so a path that is still
// converging counts once it works within the timeout.
func CheckMatrix(ctx context.Context, pods []*Pod, timeout time.Duration) *Matrix {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	m := &Matrix{Pods: pods, Reach: make([][]bool, len(pods)), Errs: make([][]error, len(pods))}
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
				err := from.Ping(ctx, to.IP)
				m.Reach[i][j], m.Errs[i][j] = err == nil, err
			}()
		}
	}
	wg.Wait()
	return m
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

// String is a table: rows send, columns answer.
func (m *Matrix) String() string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprint(w, "from \\ to")
	for _, p := range m.Pods {
		fmt.Fprintf(w, "\t%s", p.Name)
	}
	fmt.Fprintln(w)
	for i, from := range m.Pods {
		fmt.Fprintf(w, "%s (%s, %s)", from.Name, from.IP, from.Node.Name)
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
