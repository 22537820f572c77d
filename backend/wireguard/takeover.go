package wireguard

import (
	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/pkg/kernel"
)

// flanneld's devices, by the name overlayd gives them.
var flanneldDevices = map[string]string{"flannel-wg": DeviceName, "flannel-wg-v6": DeviceName6}

// TakeOver implements backend.Adopter: flanneld's kernel WireGuard devices
// become overlayd's, renamed in place. They keep their port, their private
// key (flanneld's key file is overlayd's) and their peers, so no peer has to
// change anything; the first pass then diffs the peers. Left in place they
// would hold the ports overlayd's devices need.
func (b *wgBackend) TakeOver(l kernel.LinkInfo) (backend.TakeOver, bool) {
	name, ok := flanneldDevices[l.Name]
	if !ok || l.Type != string(kernel.KindWireGuard) {
		return backend.TakeOver{}, false
	}
	return backend.TakeOver{Rename: name}, true
}
