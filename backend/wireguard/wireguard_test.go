package wireguard

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/overlayd/overlayd/backend"
	"github.com/overlayd/overlayd/netconf"
	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/subnet"
)

// flanneld's defaults, and its keys refused by name when wrong.
func TestOptions(t *testing.T) {
	b, err := New(nil)
	if err != nil {
		t.Fatal(err)
	}
	got := b.(*wgBackend).opts
	want := Options{ListenPort: 51820, ListenPortV6: 51821, Mode: "separate", Datapath: "auto"}
	if got != want {
		t.Errorf("defaults %+v, want %+v", got, want)
	}
	for conf, key := range map[string]string{
		`{"ListenPort":0}`:                   "Backend.ListenPort",
		`{"ListenPortV6":70000}`:             "Backend.ListenPortV6",
		`{"MTU":1000}`:                       "Backend.MTU",
		`{"PSK":"secret-not-a-key"}`:         "Backend.PSK",
		`{"PersistentKeepaliveInterval":-1}`: "Backend.PersistentKeepaliveInterval",
		`{"Mode":"both"}`:                    "Backend.Mode",
		`{"Datapath":"ebpf"}`:                "Backend.Datapath",
		`{"ListenPort":"51820"}`:             "Backend.ListenPort",
		`{"Port":51820}`:                     "Backend.Port",
	} {
		_, err := New(json.RawMessage(conf))
		var ne *netconf.Error
		if !errors.As(err, &ne) || ne.Key != key {
			t.Errorf("%s: error %v, want one naming %s", conf, err, key)
		}
		if strings.Contains(err.Error(), "secret-not-a-key") {
			t.Errorf("the error repeats the PSK: %v", err)
		}
	}
}

// The backend data is flanneld's wireguardLeaseAttrs, {"PublicKey":…,
// "Port":…}: a flanneld peer reads ours, and ours reads a flanneld peer's.
func TestDataIsFlanneldsShape(t *testing.T) {
	SetKeyFile(filepath.Join(t.TempDir(), "wgkey"))
	defer SetKeyFile("")
	b, err := New(json.RawMessage(`{"ListenPort":5000,"ListenPortV6":5001}`))
	if err != nil {
		t.Fatal(err)
	}
	n := backend.Node{Network: mustPrefix("10.244.0.0/16"), IPv6Network: mustPrefix("fd00:10:244::/56")}
	for f, port := range map[backend.Family]float64{backend.IPv4: 5000, backend.IPv6: 5001} {
		raw, err := b.Data(n, f)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		if len(m) != 2 || m["Port"] != port {
			t.Errorf("%s data %s: want exactly PublicKey and Port %v", f, raw, port)
		}
		if _, err := wgtypes.ParseKey(m["PublicKey"].(string)); err != nil {
			t.Errorf("%s data %s: PublicKey: %v", f, raw, err)
		}
	}
	// flanneld's data: its key, and Port 0 where its ListenPort is implied.
	key := mustKey(t)
	for raw, wantPort := range map[string]uint16{
		`{"PublicKey":"` + key.PublicKey().String() + `","Port":51820}`: 51820,
		`{"PublicKey":"` + key.PublicKey().String() + `"}`:              0,
	} {
		k, port, err := peerData(subnet.Lease{Attrs: subnet.LeaseAttrs{BackendData: json.RawMessage(raw)}}, backend.IPv4)
		if err != nil || k != key.PublicKey() || port != wantPort {
			t.Errorf("%s: key %s port %d err %v", raw, k, port, err)
		}
	}
	for _, raw := range []string{``, `null`, `{"PublicKey":""}`, `{"PublicKey":"nope"}`} {
		_, _, err := peerData(subnet.Lease{Attrs: subnet.LeaseAttrs{BackendData: json.RawMessage(raw)}}, backend.IPv4)
		if s, ok := backend.IsSkip(err); !ok || s.Reason != SkipNoKey {
			t.Errorf("%q: %v, want a %s skip", raw, err, SkipNoKey)
		}
	}
}

// The key file: generated when missing with mode 0400 in flanneld's format,
// the same key after that; a broken one is refused without quoting it.
func TestKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "wgkey")
	k, err := readOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o400 {
		t.Fatalf("key file: %v, mode %v; want 0400", err, st.Mode())
	}
	data, _ := os.ReadFile(path)
	if parsed, err := wgtypes.ParseKey(string(data)); err != nil || parsed != k {
		t.Fatalf("key file %q is not the key as flanneld reads it: %v", data, err)
	}
	again, err := readOrCreateKey(path)
	if err != nil || again != k {
		t.Fatalf("second read gave another key (%v)", err)
	}
	bad := filepath.Join(t.TempDir(), "bad")
	os.WriteFile(bad, []byte("hunter2"), 0o400)
	if _, err := readOrCreateKey(bad); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("broken key file: %v", err)
	}
}

// A spec never shows its keys.
func TestSpecHidesSecrets(t *testing.T) {
	k := mustKey(t)
	d := DeviceSpec{Name: DeviceName, PrivateKey: Secret{k}, PSK: Secret{k}}
	for _, s := range []string{fmtV(d), fmtV(&Spec{Devices: map[string]*DeviceSpec{DeviceName: &d}})} {
		if strings.Contains(s, k.String()) {
			t.Fatalf("printed spec shows the key: %s", s)
		}
	}
	j, _ := json.Marshal(d)
	if strings.Contains(string(j), k.String()) || strings.Contains(string(j), "PrivateKey\":[") {
		t.Fatalf("marshalled spec shows the key: %s", j)
	}
}

func fmtV(v any) string {
	return strings.Join([]string{fmt.Sprintf("%v", v), fmt.Sprintf("%+v", v), fmt.Sprintf("%#v", v)}, " ")
}

func mustKey(t *testing.T) wgtypes.Key {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// flanneld's kernel WireGuard devices are adopted under overlayd's names;
// nothing else is.
func TestTakeOverFlanneldDevices(t *testing.T) {
	b, err := New(nil)
	if err != nil {
		t.Fatal(err)
	}
	a := b.(backend.Adopter)
	for _, tc := range []struct {
		link kernel.LinkInfo
		want string
	}{
		{kernel.LinkInfo{Name: "flannel-wg", Type: "wireguard"}, DeviceName},
		{kernel.LinkInfo{Name: "flannel-wg-v6", Type: "wireguard"}, DeviceName6},
		{kernel.LinkInfo{Name: "flannel-wg", Type: "tuntap"}, ""},
		{kernel.LinkInfo{Name: "wg0", Type: "wireguard"}, ""},
	} {
		to, ok := a.TakeOver(tc.link)
		if ok != (tc.want != "") || to.Rename != tc.want || to.Remove {
			t.Errorf("%+v: %+v %v, want a rename to %q", tc.link, to, ok, tc.want)
		}
	}
}

// The Modes: separate is a device per family, each peer on both; the
// single-device modes put both of a peer's subnets on one device, reached
// over the family the mode says.
func TestModes(t *testing.T) {
	SetKeyFile(filepath.Join(t.TempDir(), "wgkey"))
	defer SetKeyFile("")
	peerKey := mustKey(t).PublicKey()
	data := func(port int) json.RawMessage {
		return json.RawMessage(fmt.Sprintf(`{"PublicKey":%q,"Port":%d}`, peerKey, port))
	}
	n := backend.Node{
		Name: "n1", Network: mustPrefix("10.244.0.0/16"), IPv6Network: mustPrefix("fd00:10:244::/56"),
		Lease: subnet.Lease{Subnet: mustPrefix("10.244.1.0/24"), IPv6Subnet: mustPrefix("fd00:10:244:1::/64")},
		Underlay: &ip.External{Iface: ip.Interface{Name: "eth0", MTU: 1500},
			Addr: netip.MustParseAddr("198.18.0.11"), Addr6: netip.MustParseAddr("fd00:198:18::11")},
	}
	peer := subnet.Lease{Node: "n2", Subnet: mustPrefix("10.244.2.0/24"), IPv6Subnet: mustPrefix("fd00:10:244:2::/64"),
		Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("198.18.0.12"), PublicIPv6: netip.MustParseAddr("fd00:198:18::12"),
			BackendType: Type, BackendData: data(51820), BackendV6Data: data(51821)}}
	for mode, want := range map[string]map[string]PeerSpec{
		"separate": {
			DeviceName:  {Endpoint: netip.MustParseAddrPort("198.18.0.12:51820"), AllowedIPs: []netip.Prefix{peer.Subnet}},
			DeviceName6: {Endpoint: netip.MustParseAddrPort("[fd00:198:18::12]:51821"), AllowedIPs: []netip.Prefix{peer.IPv6Subnet}},
		},
		"ipv4": {DeviceName: {Endpoint: netip.MustParseAddrPort("198.18.0.12:51820"), AllowedIPs: []netip.Prefix{peer.Subnet, peer.IPv6Subnet}}},
		"ipv6": {DeviceName: {Endpoint: netip.MustParseAddrPort("[fd00:198:18::12]:51821"), AllowedIPs: []netip.Prefix{peer.Subnet, peer.IPv6Subnet}}},
		// The peer's IPv4 address is not private: flanneld's auto chooses IPv4.
		"auto": {DeviceName: {Endpoint: netip.MustParseAddrPort("198.18.0.12:51820"), AllowedIPs: []netip.Prefix{peer.Subnet, peer.IPv6Subnet}}},
	} {
		b, err := New(json.RawMessage(fmt.Sprintf(`{"Mode":%q,"Datapath":"userspace"}`, mode)))
		if err != nil {
			t.Fatal(err)
		}
		var st backend.State
		if err := b.Peer(n, peer, &st); err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		spec := st.Datapath(Type).(*Spec)
		if len(spec.Devices) != len(want) {
			t.Errorf("%s: devices %v, want %d", mode, slices.Sorted(maps.Keys(spec.Devices)), len(want))
		}
		for dev, wp := range want {
			d := spec.Devices[dev]
			if d == nil || !samePeer(d.Peers[peerKey], wp) {
				t.Errorf("%s: %s has %+v, want the peer %+v", mode, dev, d, wp)
			}
		}
	}
}
