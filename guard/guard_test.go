package guard

import (
	"net/netip"
	"testing"
)

type exemptSet []netip.Prefix

func (s exemptSet) Exempt(a netip.Addr) bool {
	for _, p := range s {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func TestCheck(t *testing.T) {
	tests := []struct {
		addr   string
		denied bool
		kind   string
	}{
		{"169.254.169.254", true, "link-local"},
		{"127.0.0.1", true, "loopback"},
		{"127.255.255.254", true, "loopback"},
		{"10.1.2.3", true, "private"},
		{"172.16.0.1", true, "private"},
		{"172.31.255.255", true, "private"},
		{"172.32.0.1", false, ""},
		{"192.168.1.1", true, "private"},
		{"100.64.0.1", true, "shared (carrier-grade NAT)"},
		{"100.128.0.1", false, ""},
		{"0.1.2.3", true, "this-network"},
		{"192.0.0.8", true, "IETF protocol assignment"},
		{"192.0.2.1", true, "documentation"},
		{"198.18.0.1", true, "benchmarking"},
		{"198.51.100.1", true, "documentation"},
		{"203.0.113.9", true, "documentation"},
		{"224.0.0.1", true, "multicast"},
		{"255.255.255.255", true, "reserved"},
		{"8.8.8.8", false, ""},
		{"::", true, "unspecified"},
		{"::1", true, "loopback"},
		{"fd00::1", true, "unique local"},
		{"fe80::1", true, "link-local"},
		{"fe80::1%eth0", true, "link-local"},
		{"ff02::1", true, "multicast"},
		{"64:ff9b::a9fe:a9fe", true, "NAT64"},
		{"2001::1", true, "Teredo"},
		{"2001:db8::1", true, "documentation"},
		{"2002::1", true, "6to4"},
		{"2606:4700::1", false, ""},
		{"::ffff:169.254.169.254", true, "link-local"}, // mapped: checked as IPv4
		{"::ffff:127.0.0.1", true, "loopback"},
		{"::ffff:8.8.8.8", false, ""},
	}
	var g Guard
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			v := g.Check(netip.MustParseAddr(tt.addr), nil)
			if v.Denied != tt.denied || v.Range.Kind != tt.kind {
				t.Errorf("Check(%s) = denied %v (%q); want %v (%q)", tt.addr, v.Denied, v.Range.Kind, tt.denied, tt.kind)
			}
		})
	}
}

func TestExemptions(t *testing.T) {
	g := New([]netip.Prefix{netip.MustParsePrefix("10.20.0.0/16"), netip.MustParsePrefix("::ffff:192.168.5.0/120")})
	rules := exemptSet{netip.MustParsePrefix("127.0.0.1/32")}
	tests := []struct {
		addr   string
		denied bool
	}{
		{"10.20.3.4", false},        // dns.allow_private
		{"10.21.0.1", true},         // outside it
		{"192.168.5.7", false},      // a mapped prefix in allow_private covers IPv4
		{"127.0.0.1", false},        // an allowlist rule
		{"::ffff:127.0.0.1", false}, // the same address, mapped
		{"127.0.0.2", true},         // not in the rule's range
	}
	for _, tt := range tests {
		if v := g.Check(netip.MustParseAddr(tt.addr), rules); v.Denied != tt.denied {
			t.Errorf("Check(%s) denied = %v; want %v", tt.addr, v.Denied, tt.denied)
		}
	}
}
