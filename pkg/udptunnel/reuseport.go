package udptunnel

import (
	"net"
	"strconv"
	"sync"
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
	wireguardControlFns = append(wireguardControlFns, reuseport.Control, opening.record)
	reusePortEnabled = true
}

// opening collects the descriptors of the sockets StdNetBind opens for a
// session: the handover (see session.steerAndDrain) steers and drains them, and
// StdNetBind keeps them private. The control functions are the one place
// that sees them; they run inside Open, on the opening goroutine.
var opening openSockets

type openSockets struct {
	serial sync.Mutex // held across one session's bind.Open
	mu     sync.Mutex // guards the fields below
	port   string     // the port being opened, "" when none
	fds    []int
}

// open runs bind.Open(port) and returns the descriptors of the sockets it
// opened on that port. Another StdNetBind (the wireguard datapath's) may
// open sockets at the same time; only those bound to port are kept, and
// two datapaths never share a port.
func (o *openSockets) open(port int, open func() error) ([]int, error) {
	o.serial.Lock()
	defer o.serial.Unlock()
	o.mu.Lock()
	o.port, o.fds = strconv.Itoa(port), nil
	o.mu.Unlock()
	err := open()
	o.mu.Lock()
	fds := o.fds
	o.port, o.fds = "", nil
	o.mu.Unlock()
	return fds, err
}

// record is a control function: it notes the socket's descriptor when the
// socket is being bound to the port being opened.
func (o *openSockets) record(_, address string, c syscall.RawConn) error {
	_, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.port == "" || port != o.port {
		return nil
	}
	return c.Control(func(fd uintptr) { o.fds = append(o.fds, int(fd)) })
}
