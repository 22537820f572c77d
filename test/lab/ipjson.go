package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
)

// IPJSON runs iproute2's `ip -j args...` inside the namespace and decodes
// its output, e.g. the IPv6 routes of a node:
//
//	routes, err := lab.IPJSON[route](ctx, &n.Host, "-6", "route", "show")
//
// No output (nothing matched) is an empty list.
func IPJSON[T any](ctx context.Context, h *Host, args ...string) ([]T, error) {
	out, err := h.Exec(ctx, append([]string{"ip", "-j"}, args...)...)
	if err != nil {
		return nil, err
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
