package nodes

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// egressProxy is the API server's way to the kubelets and pods: an HTTP
// CONNECT proxy on a unix socket (its egress selection "cluster") that
// dials from inside the lab, where the nodes' addresses are. Kubernetes
// offers the same seam for control planes that cannot reach their nodes
// directly (konnectivity). kubectl logs, exec and port-forward go through
// it.
type egressProxy struct {
	socket string
	ln     net.Listener

	mu    sync.Mutex
	dial  func(ctx context.Context, network, addr string) (net.Conn, error)
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startEgressProxy(socket string) (*egressProxy, error) {
	os.Remove(socket)
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("egress proxy: %w", err)
	}
	e := &egressProxy{socket: socket, ln: ln, conns: map[net.Conn]struct{}{}}
	e.wg.Add(1)
	go e.serve()
	return e, nil
}

// route sets where connections are dialed from, once the lab exists.
func (e *egressProxy) route(dial func(ctx context.Context, network, addr string) (net.Conn, error)) {
	e.mu.Lock()
	e.dial = dial
	e.mu.Unlock()
}

func (e *egressProxy) serve() {
	defer e.wg.Done()
	for {
		c, err := e.ln.Accept()
		if err != nil {
			return
		}
		if !e.track(c) {
			c.Close()
			return
		}
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			defer e.untrack(c)
			e.handle(c)
		}()
	}
}

func (e *egressProxy) handle(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	if req.Method != http.MethodConnect {
		fmt.Fprintf(c, "HTTP/1.1 405 Method Not Allowed\r\n\r\n")
		return
	}
	e.mu.Lock()
	dial := e.dial
	e.mu.Unlock()
	if dial == nil {
		fmt.Fprintf(c, "HTTP/1.1 503 Service Unavailable\r\n\r\nno nodes yet\n")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	up, err := dial(ctx, "tcp", req.Host)
	cancel()
	if err != nil {
		fmt.Fprintf(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n%v\n", err)
		return
	}
	if !e.track(up) {
		up.Close()
		return
	}
	defer e.untrack(up)
	fmt.Fprintf(c, "HTTP/1.1 200 Connection established\r\n\r\n")
	done := make(chan struct{}, 2)
	go func() {
		// What the client sent after its request is already buffered.
		io.Copy(up, br)
		closeWrite(up)
		done <- struct{}{}
	}()
	go func() {
		io.Copy(c, up)
		closeWrite(c)
		done <- struct{}{}
	}()
	<-done
	<-done
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

func (e *egressProxy) track(c net.Conn) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.conns == nil {
		return false
	}
	e.conns[c] = struct{}{}
	return true
}

func (e *egressProxy) untrack(c net.Conn) {
	e.mu.Lock()
	delete(e.conns, c)
	e.mu.Unlock()
	c.Close()
}

func (e *egressProxy) close() {
	e.mu.Lock()
	for c := range e.conns {
		c.Close()
	}
	e.conns = nil
	e.mu.Unlock()
	e.ln.Close()
	e.wg.Wait()
	os.Remove(e.socket)
}
