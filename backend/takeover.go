package backend

import "github.com/overlayd/overlayd/pkg/kernel"

// TakeOver is what a backend does with a device another agent (flanneld)
// left on the node.
type TakeOver struct {
	// Rename adopts the device under this name, as it is: everything that
	// reaches it keeps working.
	Rename string
	// Remove deletes it once overlayd's datapath is in place.
	Remove bool
}

// Adopter is a backend that knows another agent's devices of its kind.
type Adopter interface {
	// TakeOver says what becomes of l, a device that is not overlayd's;
	// false when it is none of this backend's business.
	TakeOver(l kernel.LinkInfo) (TakeOver, bool)
}

// Adopters returns every registered backend that is an Adopter, with
// default options.
func Adopters() []Adopter {
	var out []Adopter
	for _, typ := range Types() {
		b, err := New(typ, nil)
		if err != nil {
			continue
		}
		if a, ok := b.(Adopter); ok {
			out = append(out, a)
		}
	}
	return out
}
