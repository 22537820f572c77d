package rules

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func netipPrefix(t *testing.T, s string) netip.Prefix {
	t.Helper()
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigValidate(t *testing.T) {
	p := func(s string) netip.Prefix { return netip.MustParsePrefix(s) }
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "ipv4", cfg: allOn},
		{name: "dual stack", cfg: Config{Network: net4, Subnet: sub4, IPv6Network: net6, IPv6Subnet: sub6, IPMasq: true}},
		{name: "ipv6 only", cfg: Config{IPv6Network: net6, IPv6Subnet: sub6, IPMasq: true}},
		{name: "nothing", cfg: Config{}},
		{name: "forward rules need no lease", cfg: Config{Network: net4, ForwardRules: true}},
		{name: "network of the wrong family", cfg: Config{Network: net6}, wantErr: "Config.Network fd10:244::/56 is not an IPv4 prefix"},
		{name: "ipv6 network of the wrong family", cfg: Config{IPv6Network: net4}, wantErr: "Config.IPv6Network 10.244.0.0/16 is not an IPv6 prefix"},
		{name: "4in6 is not ipv6", cfg: Config{IPv6Network: p("::ffff:10.0.0.0/104")}, wantErr: "Config.IPv6Network"},
		{name: "subnet outside network", cfg: Config{Network: net4, Subnet: p("10.245.1.0/24"), IPMasq: true}, wantErr: "Config.Subnet 10.245.1.0/24 is not inside Config.Network 10.244.0.0/16"},
		{name: "subnet larger than network", cfg: Config{Network: net4, Subnet: p("10.0.0.0/8")}, wantErr: "Config.Subnet 10.0.0.0/8 is not inside"},
		{name: "subnet without network", cfg: Config{Subnet: sub4}, wantErr: "Config.Subnet 10.244.1.0/24 is set but Config.Network is not"},
		{name: "masq needs the lease", cfg: Config{Network: net4, IPMasq: true}, wantErr: "Config.Subnet is required with IPMasq"},
		{name: "masq needs the ipv6 lease", cfg: Config{Network: net4, Subnet: sub4, IPv6Network: net6, IPMasq: true}, wantErr: "Config.IPv6Subnet is required with IPMasq"},
		{name: "ipv6 subnet of the wrong family", cfg: Config{IPv6Network: net6, IPv6Subnet: sub4}, wantErr: "Config.IPv6Subnet 10.244.1.0/24 is not an IPv6 prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestDesiredFollowsConfig(t *testing.T) {
	got := desired(Config{Network: net4, Subnet: sub4, IPMasq: true}, false, false)
	if got[ForwardChain] != nil {
		t.Errorf("forward chain wanted with ForwardRules off")
	}
	masq := got[MasqChain]
	if masq == nil {
		t.Fatal("no masquerade chain with IPMasq on")
	}
	last := masq.rules[len(masq.rules)-1]
	if slices.Contains(last, "--random-fully") {
		t.Errorf("--random-fully used although iptables lacks it: %q", last)
	}
	if got := desired(allOn, true, true); got[MasqChain] != nil || got[ForwardChain] != nil {
		t.Errorf("IPv6 chains wanted with IPv6 off: %+v", got)
	}
	// A lease change is a different desired state, not drift.
	other := allOn
	other.Subnet = netip.MustParsePrefix("10.244.2.0/24")
	if desired(allOn, false, true)[MasqChain].key() == desired(other, false, true)[MasqChain].key() {
		t.Error("a different lease gives the same desired-state key")
	}
	// Host bits in the config do not leak into rules.
	sloppy := Config{Network: netip.MustParsePrefix("10.244.3.4/16"), Subnet: netip.MustParsePrefix("10.244.1.9/24"), IPMasq: true}
	if a, b := desired(sloppy, false, true)[MasqChain].key(), desired(Config{Network: net4, Subnet: sub4, IPMasq: true}, false, true)[MasqChain].key(); a != b {
		t.Errorf("unmasked prefixes give different rules:\n%s\n%s", a, b)
	}
}

func TestSplitAndJoinRule(t *testing.T) {
	tests := []struct {
		line string
		want []string
	}{
		{`-A X -s 10.0.0.0/8 -j RETURN`, []string{"-A", "X", "-s", "10.0.0.0/8", "-j", "RETURN"}},
		{`-A X -m comment --comment "two words" -j Y`, []string{"-A", "X", "-m", "comment", "--comment", "two words", "-j", "Y"}},
		{`-A X -m comment --comment "say \"hi\" \\ bye" -j Y`, []string{"-A", "X", "-m", "comment", "--comment", `say "hi" \ bye`, "-j", "Y"}},
		{`-A X -m comment --comment nospace -j Y`, []string{"-A", "X", "-m", "comment", "--comment", "nospace", "-j", "Y"}},
		{`-A X  ! -d 224.0.0.0/4`, []string{"-A", "X", "!", "-d", "224.0.0.0/4"}},
	}
	for _, tt := range tests {
		got, err := splitRule(tt.line)
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("splitRule(%q) = %q, %v; want %q", tt.line, got, err, tt.want)
		}
		again, err := splitRule(joinRule(tt.want))
		if err != nil || !slices.Equal(again, tt.want) {
			t.Errorf("splitRule(joinRule(%q)) = %q, %v", tt.want, again, err)
		}
	}
	if _, err := splitRule(`-A X --comment "open`); err == nil {
		t.Error("unterminated quote accepted")
	}
	if jumpsTo([]string{"-m", "comment", "--comment", "-j OVERLAYD-FWD", "-j", "ACCEPT"}, ForwardChain) {
		t.Error("a comment mentioning our chain counted as a jump")
	}
}

// counterValue reads a counter without the testutil package (which would
// pull another module into go.mod).
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
