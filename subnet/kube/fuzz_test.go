package kube

import (
	"bytes"
	"encoding/json"
	"maps"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/overlayd/overlayd/netconf"
)

// The hand-written decoders meet whatever the API server (or anyone who can
// write a Node) sends: these fuzz targets, seeded with real objects, check
// they never crash and agree with the generated decoders. make fuzz runs
// them longer; a crash found becomes a seed here.

// FuzzSlimNode: the slim decoder never panics; on every Node the generated
// corev1.Node decoder takes, in the canonical form the API server sends
// (the generated encoder's), it reads the same name, annotations and pod
// subnets; and what it takes of other input agrees with the generated
// decoder too. (On input with protobuf groups, which no Kubernetes type
// has, the generated decoder is laxer; the slim one refuses it.)
func FuzzSlimNode(f *testing.F) {
	for i := range 3 {
		n := realisticNode(i, netip.MustParsePrefix("10.0.0.0/8"))
		data, err := n.Marshal()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x80, 0x80, 0x80, 0x80, 0x10}) // a length past the end
	same := func(t *testing.T, slim *slimNode, full *corev1.Node) {
		t.Helper()
		if slim.Name != full.Name || !maps.Equal(slim.Annotations, full.Annotations) ||
			slim.Spec.PodCIDR != full.Spec.PodCIDR || !slices.Equal(slim.Spec.PodCIDRs, full.Spec.PodCIDRs) {
			t.Fatalf("slim %q %v %q %v; generated %q %v %q %v", slim.Name, slim.Annotations, slim.Spec.PodCIDR, slim.Spec.PodCIDRs,
				full.Name, full.Annotations, full.Spec.PodCIDR, full.Spec.PodCIDRs)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var slim slimNode
		slimErr := slim.Unmarshal(data)
		var full corev1.Node
		if err := full.Unmarshal(data); err != nil {
			return
		}
		if slimErr == nil {
			same(t, &slim, &full)
		}
		canonical, err := full.Marshal()
		if err != nil {
			return
		}
		slim = slimNode{}
		if err := slim.Unmarshal(canonical); err != nil {
			t.Fatalf("a Node in canonical form refused: %v", err)
		}
		same(t, &slim, &full)
	})
}

// FuzzDecodeWatchEvent: a watch frame decodes to an event with a Node or a
// Status, or to an error; never a panic.
func FuzzDecodeWatchEvent(f *testing.F) {
	node, err := realisticNode(1, netip.MustParsePrefix("10.0.0.0/8")).Marshal()
	if err != nil {
		f.Fatal(err)
	}
	status, err := (&metav1.Status{Status: metav1.StatusFailure, Code: 410, Reason: metav1.StatusReasonExpired}).Marshal()
	if err != nil {
		f.Fatal(err)
	}
	for _, o := range []struct {
		typ, kind string
		raw       []byte
	}{{"ADDED", "Node", node}, {"MODIFIED", "Node", node}, {"DELETED", "Node", node}, {"ERROR", "Status", status}, {"BOOKMARK", "Node", node}} {
		unknown := runtime.Unknown{TypeMeta: runtime.TypeMeta{APIVersion: "v1", Kind: o.kind}, Raw: o.raw}
		u, err := unknown.Marshal()
		if err != nil {
			f.Fatal(err)
		}
		ev := metav1.WatchEvent{Type: o.typ, Object: runtime.RawExtension{Raw: append(bytes.Clone(protobufMagic), u...)}}
		frame, err := ev.Marshal()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(frame)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		ev, err := decodeWatchEvent(frame)
		if err != nil {
			return
		}
		switch ev.Object.(type) {
		case *slimNode, *metav1.Status:
		default:
			t.Fatalf("decoded a %T", ev.Object)
		}
	})
}

// FuzzDecodeRecord: any annotation values give a peer's attributes or a
// problem; what is taken is well formed (addresses of their family, JSON
// backend data), and a family left out is one whose address is absent.
func FuzzDecodeRecord(f *testing.F) {
	k, err := newKeys("flannel.alpha.coreos.com")
	if err != nil {
		f.Fatal(err)
	}
	f.Add("true", "vxlan", `{"VNI":1,"VtepMAC":"0a:58:0a:f4:02:01"}`, "198.18.0.12", `{"VNI":1,"VtepMAC":"0a:58:0a:f4:02:02"}`, "fd00:198:18::12")
	f.Add("true", "host-gw", "null", "198.18.0.13", "null", "")
	f.Add("true", "", "null", "198.18.0.14", "", "") // flanneld's udp
	f.Add("false", "vxlan", `{"VNI":`, "198.18.0.999", "x", "::ffff:1.2.3.4")
	net := &netconf.Config{EnableIPv4: true, EnableIPv6: true}
	f.Fuzz(func(t *testing.T, managed, typ, data, ip4, data6, ip6 string) {
		a := map[string]string{k.managed: managed, k.backendType: typ, k.backendData: data, k.publicIP: ip4, k.backendV6Data: data6, k.publicIPv6: ip6}
		attrs, p := k.decodeRecord(net, a)
		if p != nil {
			if p.reason != reasonMissingAnnotations && p.reason != reasonMalformedAnnotations || p.detail == "" {
				t.Fatalf("problem %+v", p)
			}
			return
		}
		if !attrs.PublicIP.IsValid() && !attrs.PublicIPv6.IsValid() {
			t.Fatal("taken without any address")
		}
		if attrs.PublicIP.IsValid() && (!attrs.PublicIP.Is4() || ip4 == "") || attrs.PublicIPv6.IsValid() && (!attrs.PublicIPv6.Is6() || attrs.PublicIPv6.Is4In6()) {
			t.Fatalf("addresses %s %s from %q %q", attrs.PublicIP, attrs.PublicIPv6, ip4, ip6)
		}
		for _, d := range [][]byte{attrs.BackendData, attrs.BackendV6Data} {
			if len(d) > 0 && !json.Valid(d) {
				t.Fatalf("backend data %q is not JSON", d)
			}
		}
	})
}
