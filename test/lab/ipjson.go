package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
)

// DumpInterrupted is what iproute2 prints when the kernel reports a dump
// that a concurrent change interrupted (NLM_F_DUMP_INTR): the output is not
// a consistent snapshot and must be read again.
const DumpInterrupted = "Dump was interrupted"

// IPJSON runs iproute2's `ip -j args...` inside the namespace and decodes
// its output, e.g. the IPv6 routes of a node:
//
//	routes, err := lab.IPJSON[route](ctx, &n.Host, "-6", "route", "show")
//
// No output (nothing matched) is an empty list.
func IPJSON[T any](ctx context.Context, h *Host, args ...string) ([]T, error) {
	var out string
	var err error
	for range 10 {
		if out, err = h.Exec(ctx, append([]string{"ip", "-j"}, args...)...); err != nil {
			return nil, err
		}
		if !strings.Contains(out, DumpInterrupted) {
			break
		}
		// The table changed while the kernel dumped it: ask again.
	}
	var v []T
	if strings.TrimSpace(out) == "" {
		return v, nil
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return nil, fmt.Errorf("%s: ip -j %s: %w\n%s", h.NS, strings.Join(args, " "), err, out)
	}
	return v, nil
}
