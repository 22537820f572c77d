package lab

import (
	"fmt"
	"os"
	"testing"
)

// BenchmarkBuild builds and closes a three-node lab.
func BenchmarkBuild(b *testing.B) {
	for b.Loop() {
		l, err := Start(Options{Prefix: testPrefix, Nodes: 3})
		if err != nil {
			b.Fatal(err)
		}
		if err := l.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAttachPod attaches and removes one pod, directly and through
// the real CNI plugins.
func BenchmarkAttachPod(b *testing.B) {
	l := New(b, Options{Prefix: testPrefix, Nodes: 2})
	os.WriteFile(l.Nodes[1].SubnetEnv, []byte("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.2.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"), 0o644)
	for _, c := range []struct {
		name string
		add  func(string) (*Pod, error)
	}{
		{"direct", func(name string) (*Pod, error) { return l.Nodes[0].AddPod(name, podSubnet(1)) }},
		{"cni", l.Nodes[1].AddCNIPod},
	} {
		b.Run(c.name, func(b *testing.B) {
			i := 0
			for b.Loop() {
				i++
				p, err := c.add(fmt.Sprintf("%s%d", c.name, i))
				if err != nil {
					b.Fatal(err)
				}
				if err := p.Remove(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
