package kernel

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// linkFacts are what the watch compares of a watched link that is not
// overlayd's (the underlay): the kernel announces such a link again for
// reasons that change nothing overlayd depends on — creating a vxlan
// device on it is one — and each announcement would cost a full pass.
type linkFacts struct {
	name   string
	mtu    int
	flags  net.Flags
	oper   netlink.LinkOperState
	mac    string
	master int
}

func factsOf(l netlink.Link) linkFacts {
	a := l.Attrs()
	return linkFacts{name: a.Name, mtu: a.MTU, flags: a.Flags, oper: a.OperState, mac: a.HardwareAddr.String(), master: a.MasterIndex}
}

// watchedLinks remembers the facts of the watched links that are not
// overlayd's, as last seen.
type watchedLinks map[int]linkFacts

// seedWatchedLinks reads the facts of the links relevant(ifindex) names,
// in the namespace ns, right after a subscription starts: the first event
// of each is then news only if it differs. (A change between subscribing
// and this read is in what the read sees; the pass that follows a start
// or a resubscription reads the kernel anyway.)
func seedWatchedLinks(ns netns.NsHandle, relevant func(int) bool) (watchedLinks, error) {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("opening netlink: %w", err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	w := watchedLinks{}
	for _, l := range links {
		if idx := l.Attrs().Index; relevant(idx) {
			w[idx] = factsOf(l)
		}
	}
	return w, nil
}

// changed records u's facts and reports whether they differ from the last
// seen (or the link went away).
func (w watchedLinks) changed(u netlink.LinkUpdate) bool {
	idx := int(u.Index)
	if u.Header.Type == unix.RTM_DELLINK {
		delete(w, idx)
		return true
	}
	f := factsOf(u.Link)
	if seen, ok := w[idx]; ok && seen == f {
		return false
	}
	w[idx] = f
	return true
}
