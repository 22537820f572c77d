package lab

import (
	"errors"
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
	node   *Node
	addr   string
	ln     net.Listener // guarded by mu
	target string

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	cut    bool // CutAPI: every connection is reset
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
	fw := &forwarder{node: n, addr: addr, ln: ln, target: l.apiAddr, conns: map[net.Conn]struct{}{}}
	fw.wg.Add(1)
	go fw.serve(ln)
	l.onClose(fw.close)
	l.mu.Lock()
	n.forwarders = append(n.forwarders, fw)
	l.mu.Unlock()
	return nil
}

// CutAPI cuts the node off the control plane, as an API server that went
// down would: every connection through the node's forwarders is reset and
// new ones are refused (nothing listens), until RestoreAPI.
func (n *Node) CutAPI() error { return n.setAPICut(true) }

// RestoreAPI ends CutAPI: the forwarders listen again.
func (n *Node) RestoreAPI() error { return n.setAPICut(false) }

func (n *Node) setAPICut(cut bool) error {
	n.lab.mu.Lock()
	fws := n.forwarders
	n.lab.mu.Unlock()
	var errs []error
	for _, fw := range fws {
		errs = append(errs, fw.setCut(cut))
	}
	return errors.Join(errs...)
}

func (fw *forwarder) setCut(cut bool) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.closed || fw.cut == cut {
		return nil
	}
	if cut {
		fw.cut = true
		fw.ln.Close()
		for c := range fw.conns {
			reset(c)
		}
		return nil
	}
	ln, err := fw.node.Listen("tcp", fw.addr)
	if err != nil {
		return fmt.Errorf("%s: listening on %s again: %w", fw.node.Name, fw.addr, err)
	}
	fw.ln, fw.cut = ln, false
	fw.wg.Add(1)
	go fw.serve(ln)
	return nil
}

// reset closes c with a TCP reset rather than a FIN, as a broken path
// looks to the client.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
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

func (fw *forwarder) serve(ln net.Listener) {
	defer fw.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed, or cut
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
	if fw.cut {
		reset(c)
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
	ln := fw.ln
	fw.mu.Unlock()
	ln.Close()
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
