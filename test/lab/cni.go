package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// CNINetworkName is the network name in the CNI config, as in flannel's
// kube-flannel conflist; host-local keeps its allocations under it.
const CNINetworkName = "cbr0"

// CNIVersion is the CNI spec version the lab's config declares.
const CNIVersion = "0.3.1"

// CNIConfig returns the network config the lab gives the flannel plugin
// for this node: what flannel's conflist says (delegate to bridge with
// hairpinMode and isDefaultGateway, host-local IPAM), with the node's own
// subnet.env and data directories so nodes share no files.
func (n *Node) CNIConfig() []byte {
	conf := map[string]any{
		"cniVersion": CNIVersion,
		"name":       CNINetworkName,
		"type":       "flannel",
		"subnetFile": n.SubnetEnv,
		"dataDir":    n.FlannelDataDir(),
		"ipam":       map[string]any{"dataDir": n.IPAMDataDir()},
		"delegate":   map[string]any{"hairpinMode": true, "isDefaultGateway": true},
	}
	data, err := json.Marshal(conf)
	if err != nil {
		panic(err) // plain maps of strings and bools always marshal
	}
	return data
}

// FlannelDataDir is where the flannel plugin keeps each container's
// delegate config (its default is /var/lib/cni/flannel).
func (n *Node) FlannelDataDir() string { return filepath.Join(n.Dir, "cni", "flannel") }

// IPAMDataDir is host-local's data directory (its default is
// /var/lib/cni/networks); allocations are under <dir>/cbr0/<ip>.
func (n *Node) IPAMDataDir() string { return filepath.Join(n.Dir, "cni", "networks") }

var loopbackConfig = []byte(`{"cniVersion":"` + CNIVersion + `","name":"lo","type":"loopback"}`)

// AddCNIPod attaches a pod the way kubelet would with flannel's conflist:
// the real loopback plugin for lo, then the real flannel plugin for eth0,
// which reads the node's SubnetEnv (written by overlayd, or by the test)
// and delegates to bridge and host-local. The plugins run inside the node's
// namespace. The pod gets an address of every family subnet.env has a
// subnet of: FLANNEL_SUBNET for IPv4, FLANNEL_IPV6_SUBNET for IPv6.
func (n *Node) AddCNIPod(name string) (*Pod, error) {
	l := n.lab
	if err := l.reservePod(n, name, "cni"); err != nil {
		return nil, err
	}
	p := &Pod{Name: name, Node: n, ContainerID: "lab-" + l.ID + "-" + name}
	n.attachMu.Lock()
	defer n.attachMu.Unlock()
	return l.registerPod(p, l.attachCNI(n, p))
}

func (l *Lab) attachCNI(n *Node, p *Pod) error {
	if _, err := l.cniBinDir(); err != nil {
		return err
	}
	if err := l.initHost(&p.Host, "pod-"+p.Name); err != nil {
		return err
	}
	// The bridge plugin waits until the pod's IPv6 addresses have passed
	// duplicate address detection (a second or two): the pod's eth0, made
	// after this, skips it, as the lab's own addresses do.
	if err := p.SetSysctl("net/ipv6/conf/default/accept_dad", "0"); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := l.runCNI(ctx, n, "loopback", "ADD", p, "lo", loopbackConfig); err != nil {
		return err
	}
	out, err := l.runCNI(ctx, n, "flannel", "ADD", p, "eth0", n.CNIConfig())
	if err != nil {
		return err
	}
	if err := p.setCNIAddrs(out); err != nil {
		// Release what host-local allocated: the namespace alone goes.
		if derr := l.cniDel(ctx, p); derr != nil {
			err = fmt.Errorf("%w (CNI DEL: %v)", err, derr)
		}
		return err
	}
	return nil
}

// setCNIAddrs takes the pod's addresses, one a family, from the flannel
// plugin's result (that of the bridge plugin it delegated to).
func (p *Pod) setCNIAddrs(result []byte) error {
	var r struct {
		IPs []struct {
			Address string `json:"address"`
			Gateway string `json:"gateway"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(result, &r); err != nil {
		return fmt.Errorf("pod %s: parsing flannel plugin result %q: %w", p.Name, result, err)
	}
	for _, a := range r.IPs {
		pfx, err := netip.ParsePrefix(a.Address)
		if err != nil {
			return fmt.Errorf("pod %s: flannel plugin result: address %q: %w", p.Name, a.Address, err)
		}
		gw, _ := netip.ParseAddr(a.Gateway) // the zero Addr without a gateway
		addr, subnet, gateway := &p.IP, &p.Subnet, &p.Gateway
		if pfx.Addr().Is6() {
			addr, subnet, gateway = &p.IP6, &p.Subnet6, &p.Gateway6
		}
		if addr.IsValid() {
			return fmt.Errorf("pod %s: flannel plugin returned two addresses of one family: %s", p.Name, result)
		}
		*addr, *subnet, *gateway = pfx.Addr(), pfx.Masked(), gw
	}
	if !p.IP.IsValid() && !p.IP6.IsValid() {
		return fmt.Errorf("pod %s: flannel plugin returned no address: %s", p.Name, result)
	}
	return nil
}

func (l *Lab) cniDel(ctx context.Context, p *Pod) error {
	n := p.Node
	_, err := l.runCNI(ctx, n, "flannel", "DEL", p, "eth0", n.CNIConfig())
	if _, lerr := l.runCNI(ctx, n, "loopback", "DEL", p, "lo", loopbackConfig); err == nil {
		err = lerr
	}
	return err
}

// runCNI invokes a plugin as the CNI spec says (CNI_* environment, config
// on stdin, result on stdout) inside the node's namespace.
func (l *Lab) runCNI(ctx context.Context, n *Node, plugin, command string, p *Pod, ifname string, conf []byte) ([]byte, error) {
	bins, err := l.cniBinDir()
	if err != nil {
		return nil, err
	}
	cmd := n.Command(ctx, filepath.Join(bins, plugin))
	cmd.Env = append(withSbinPath(os.Environ()),
		"CNI_COMMAND="+command,
		"CNI_CONTAINERID="+p.ContainerID,
		"CNI_NETNS="+p.Path(),
		"CNI_IFNAME="+ifname,
		"CNI_PATH="+bins,
	)
	cmd.Stdin = bytes.NewReader(conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		// A plugin reports its error as JSON on stdout.
		return nil, fmt.Errorf("%s: CNI %s %s for pod %s: %w: %s %s", n.Name, plugin, command, p.Name, err,
			strings.TrimSpace(stdout.String()), strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// withSbinPath makes sure PATH has the sbin directories: the bridge plugin
// runs iptables for ipMasq.
func withSbinPath(env []string) []string {
	out := make([]string, 0, len(env)+1)
	found := false
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			found = true
			for _, d := range []string{"/usr/sbin", "/sbin"} {
				if !strings.Contains(":"+v+":", ":"+d+":") {
					v += ":" + d
				}
			}
			kv = "PATH=" + v
		}
		out = append(out, kv)
	}
	if !found {
		out = append(out, "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
	}
	return out
}
