package lab

import (
	"fmt"
	"io"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// forwarder accepts connections on a listener inside a node namespace and
// relays each to the API server in the host namespace. The listener's
// socket was created inside the node and stays there; the dials happen on
// ordinary threads, in the host namespace.
type forwarder struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// connectAPI starts n's forwarder and writes its kubeconfig.
func (l *Lab) connectAPI(n *Node) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(l.opts.APIPort))
	if err := n.ForwardAPI(addr); err != nil {
		return err
	}
	n.APIServer = "https://" + addr
	n.Kubeconfig = filepath.Join(n.Dir, "kubeconfig")
	return n.WriteKubeconfig(n.Kubeconfig, l.opts.KubeIdentity)
}

// ForwardAPI makes the control plane reachable at addr (host:port) inside
// the node as well, e.g. at the kubernetes Service's address, where a
// cluster's kube-proxy would take pods to the API server. addr's IP must
// be on one of the node's interfaces. The forwarder stops when the lab
// closes.
func (n *Node) ForwardAPI(addr string) error {
	l := n.lab
	if l.apiAddr == "" {
		return fmt.Errorf("%s: the lab has no control plane", n.Name)
	}
	ln, err := n.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fw := &forwarder{ln: ln, target: l.apiAddr, conns: map[net.Conn]struct{}{}}
	fw.wg.Add(1)
	go fw.serve()
	l.onClose(fw.close)
	return nil
}

// WriteKubeconfig writes a kubeconfig for identity (controlplane.Admin or a
// "namespace/name" service account) that reaches the control plane from
// inside the node.
func (n *Node) WriteKubeconfig(path, identity string) error {
	cp := n.lab.opts.ControlPlane
	if cp == nil {
		return fmt.Errorf("%s: the lab has no control plane", n.Name)
	}
	if err := cp.WriteKubeconfigFor(path, identity, n.APIServer); err != nil {
		return fmt.Errorf("%s: writing kubeconfig: %w", n.Name, err)
	}
	return nil
}

func (fw *forwarder) serve() {
	defer fw.wg.Done()
	for {
		c, err := fw.ln.Accept()
		if err != nil {
			return // closed
		}
		if !fw.add(c) {
			c.Close()
			return
		}
		fw.wg.Add(1)
		go func() {
			defer fw.wg.Done()
			defer fw.remove(c)
			fw.relay(c)
		}()
	}
}

func (fw *forwarder) relay(c net.Conn) {
	up, err := net.DialTimeout("tcp", fw.target, 5*time.Second)
	if err != nil {
		return // the client sees its connection closed
	}
	if !fw.add(up) {
		up.Close()
		return
	}
	defer fw.remove(up)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src)
		// Pass the half-close on, so each side sees the other's EOF.
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done
	<-done
}

func (fw *forwarder) add(c net.Conn) bool {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.closed {
		return false
	}
	fw.conns[c] = struct{}{}
	return true
}

func (fw *forwarder) remove(c net.Conn) {
	fw.mu.Lock()
	delete(fw.conns, c)
	fw.mu.Unlock()
	c.Close()
}

func (fw *forwarder) close() {
	fw.mu.Lock()
	fw.closed = true
	for c := range fw.conns {
		c.Close()
	}
	fw.mu.Unlock()
	fw.ln.Close()
	fw.wg.Wait()
}

// hostPort returns host:port of an https URL.
func hostPort(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" || u.Port() == "" {
		return "", fmt.Errorf("lab: control plane URL %q: want https://host:port", rawURL)
	}
	return u.Host, nil
}
