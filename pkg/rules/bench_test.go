package rules

import (
	"testing"
)

// BenchmarkEnsure measures one Ensure of a dual-stack config per iptables
// variant: "unchanged" is the periodic resync (read only), "repair" restores
// a flushed masquerade chain in each family.
func BenchmarkEnsure(b *testing.B) {
	for _, bk := range backends {
		b.Run(bk.name, func(b *testing.B) { benchmarkEnsure(b, bk) })
	}
}

func benchmarkEnsure(b *testing.B, bk backend) {
	dual := allOn
	dual.IPv6Network, dual.IPv6Subnet = net6, sub6

	b.Run("unchanged", func(b *testing.B) {
		n := newNode(b, bk, "bench")
		n.ensure(b, dual)
		err := n.ns.do(b, func() error {
			b.ResetTimer()
			for range b.N {
				if changes, err := n.m.Ensure(dual); err != nil || changes != 0 {
					b.Fatalf("Ensure: %d changes, %v", changes, err)
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	})
	b.Run("repair", func(b *testing.B) {
		n := newNode(b, bk, "bench")
		n.ensure(b, dual)
		for range b.N {
			b.StopTimer()
			n.ipt(b, false, "-t", "nat", "-F", MasqChain)
			n.ipt(b, true, "-t", "nat", "-F", MasqChain)
			b.StartTimer()
			if changes := n.ensure(b, dual); changes != 2 {
				b.Fatalf("Ensure made %d changes, want 2", changes)
			}
		}
	})
}
