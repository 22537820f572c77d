package wireguard

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/vishvananda/netns"

	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/pkg/tunqueue"
)

// userDevice is wireguard-go running over a queue of the persistent TUN
// device that the kernel reconciler made, with the offloads the udp backend
// uses (pkg/tunqueue), and answering wgctrl on its control socket.
//
// Its UDP sockets are wireguard-go's StdNetBind, which pkg/udptunnel's
// reuseport.go gives SO_REUSEPORT in every process that links it (this
// one). That is harmless here: only one agent runs wireguard-go on a node
// at a time (a second one stands by, standby.go), so no two sockets share
// the port for long; at most a stopping agent's socket is still closing
// while its successor binds, which the option allows.
type userDevice struct {
	dev     *device.Device
	uapi    net.Listener
	sock    string // the control socket's name, which wgctrl knows the device by
	ifindex int
	ns      netns.NsHandle
}

// SocketName is the name of the control socket of the TUN device name:
// wgctrl and wireguard-go keep it in /var/run/wireguard/<name>.sock, one
// directory for every network namespace of the host, so the name carries
// the namespace's inode and agents of several nodes on one host (the lab)
// never take each other's socket. It is read in the calling thread's
// namespace.
func SocketName(name string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return "", fmt.Errorf("reading this network namespace's inode: %w", err)
	}
	return name + "." + strconv.FormatUint(st.Ino, 10), nil
}

// startUserDevice attaches wireguard-go to the TUN device name, in the
// calling thread's network namespace. The device starts with no key and no
// peers: it sends nothing until configure gives it them.
func startUserDevice(name string, log *zap.Logger) (*userDevice, error) {
	sock, err := SocketName(name)
	if err != nil {
		return nil, err
	}
	// wgctrl's requests are served on goroutines of their own, and a new
	// listen port binds there: they run in this namespace, not in whatever
	// namespace their thread happens to be in (a test's host namespace).
	ns, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("opening this network namespace: %w", err)
	}
	tdev, ifindex, err := tunqueue.Attach(name)
	if err != nil {
		ns.Close()
		return nil, err
	}
	// wireguard-go logs no keys; its per-packet lines go to debug.
	sugar := log.Sugar()
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), &device.Logger{Verbosef: sugar.Debugf, Errorf: sugar.Infof})
	fail := func() { dev.Close(); ns.Close() }
	f, err := ipc.UAPIOpen(sock)
	if err != nil {
		fail()
		return nil, fmt.Errorf("opening the control socket of WireGuard device %s: %w", name, err)
	}
	l, err := ipc.UAPIListen(sock, f)
	f.Close()
	if err != nil {
		fail()
		return nil, fmt.Errorf("listening on the control socket of WireGuard device %s: %w", name, err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go kernel.InNamespace(ns, func() error { dev.IpcHandle(c); return nil })
		}
	}()
	if err := dev.Up(); err != nil {
		l.Close()
		fail()
		return nil, fmt.Errorf("bringing up WireGuard device %s: %w", name, err)
	}
	return &userDevice{dev: dev, uapi: l, sock: sock, ifindex: ifindex, ns: ns}, nil
}

// greet starts a handshake with each of peers. A new wireguard-go (a
// restarted agent) has no sessions, while its peers still hold the previous
// process's: a peer that only answers would go on sending with those, which
// nothing here can decrypt, until WireGuard's own 15 s timeout makes it
// handshake again.
//
// Of two agents that start together (a cluster start, several nodes rolled
// at once) the one with the greater public key greets greetDelay later.
// Greeting in the same millisecond, each would answer the other's
// initiation, so neither's own is answered; with traffic queued both
// would retry exactly RekeyTimeout later, again together, for as long as
// traffic flows (seen in the e2e lab).
func (u *userDevice) greet(own wgtypes.Key, peers map[wgtypes.Key]PeerSpec) {
	for k := range peers {
		p := u.dev.LookupPeer(device.NoisePublicKey(k))
		if p == nil {
			continue
		}
		if bytes.Compare(own[:], k[:]) < 0 {
			p.SendHandshakeInitiation(false)
			continue
		}
		time.AfterFunc(greetDelay, func() { p.SendHandshakeInitiation(false) })
	}
}

// greetDelay is far longer than a handshake's round trip between nodes,
// and short against what a restart loses anyway.
const greetDelay = 30 * time.Millisecond

// alive reports whether the device still runs on the TUN device of ifindex
// (wireguard-go closes itself when its TUN goes away).
func (u *userDevice) alive(ifindex int) bool {
	select {
	case <-u.dev.Wait():
		return false
	default:
	}
	return u.ifindex == ifindex
}

// close stops wireguard-go; the TUN device stays (without carrier, so the
// kernel drops what is routed to it: nothing leaves unencrypted).
func (u *userDevice) close() error {
	err := u.uapi.Close() // removes the socket file
	u.dev.Close()
	u.ns.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
