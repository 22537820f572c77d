package udptunnel

import (
	"syscall"
	_ "unsafe" // go:linkname

	_ "golang.zx2c4.com/wireguard/conn" // initialised first: its own socket options are in the list

	"github.com/overlayd/overlayd/pkg/reuseport"
)

// wireguardControlFns is wireguard-go's list of socket options that
// StdNetBind applies to each socket it opens, before bind. StdNetBind has
// no way to add one (upstream: WireGuard/wireguard-go pull request 125,
// "Add extra control functions for StdNetBind", not merged), and the
// datapath needs SO_REUSEPORT: during a surge upgrade the new agent binds
// the tunnel port while the old one still serves it, and the kernel only
// allows that when every socket on the port set the option before its
// bind. Reimplementing StdNetBind for one option would mean owning its UDP
// GSO/GRO code; reaching its list is one line. The element type is conn's
// unexported controlFn, func(network, address string, c syscall.RawConn)
// error. Should the name ever not resolve, the list below is empty after
// conn's init and reusePortEnabled reports it (TestReusePort fails).
//
//go:linkname wireguardControlFns golang.zx2c4.com/wireguard/conn.controlFns
var wireguardControlFns []func(network, address string, c syscall.RawConn) error

// reusePortEnabled says whether StdNetBind's sockets get SO_REUSEPORT.
var reusePortEnabled bool

func init() {
	if len(wireguardControlFns) == 0 {
		return // not conn's list (see above): leave it alone
	}
	wireguardControlFns = append(wireguardControlFns, reuseport.Control)
	reusePortEnabled = true
}
