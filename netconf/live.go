package netconf

import "fmt"

// CheckLiveChange refuses a change from running to next that would move
// pods' addresses or the lease: it needs a new network, not a reload. The
// backend and its options may change; nothing else.
func CheckLiveChange(running, next *Config) error {
	fixed := []struct {
		key      string
		old, new any
	}{
		{"Network", running.Network, next.Network},
		{"SubnetLen", running.SubnetLen, next.SubnetLen},
		{"SubnetMin", running.SubnetMin, next.SubnetMin},
		{"SubnetMax", running.SubnetMax, next.SubnetMax},
		{"EnableIPv4", running.EnableIPv4, next.EnableIPv4},
		{"EnableIPv6", running.EnableIPv6, next.EnableIPv6},
		{"IPv6Network", running.IPv6Network, next.IPv6Network},
		{"IPv6SubnetLen", running.IPv6SubnetLen, next.IPv6SubnetLen},
		{"IPv6SubnetMin", running.IPv6SubnetMin, next.IPv6SubnetMin},
		{"IPv6SubnetMax", running.IPv6SubnetMax, next.IPv6SubnetMax},
		{"LeaseMode", running.LeaseMode, next.LeaseMode},
	}
	for _, f := range fixed {
		if f.old != f.new {
			return &Error{Key: f.key, Msg: fmt.Sprintf("changed from %v to %v, which cannot be applied to a running cluster (pods keep their addresses); the running configuration stays in force", f.old, f.new)}
		}
	}
	return nil
}
