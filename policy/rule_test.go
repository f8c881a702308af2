package policy

import (
	"net/netip"
	"testing"
)

func TestParseRuleForms(t *testing.T) {
	tests := []struct {
		text   string
		kind   Kind
		host   string
		prefix string
		port   uint16
	}{
		{"api.example.com", KindExact, "api.example.com", "", 0},
		{"API.Example.COM", KindExact, "api.example.com", "", 0},
		{"api.example.com.", KindExact, "api.example.com", "", 0},
		{"BÜCHER.example.", KindExact, "xn--bcher-kva.example", "", 0},
		{"xn--bcher-kva.example", KindExact, "xn--bcher-kva.example", "", 0},
		{"under_score.example.com", KindExact, "under_score.example.com", "", 0},
		{"localhost", KindExact, "localhost", "", 0},
		{"payments.example.org:8443", KindExact, "payments.example.org", "", 8443},
		{"*.example.com", KindWildcard, "example.com", "", 0},
		{"*.Example.COM.", KindWildcard, "example.com", "", 0},
		{"*.example.co.uk", KindWildcard, "example.co.uk", "", 0},
		{"*.example.com:8443", KindWildcard, "example.com", "", 8443},
		{"*.bücher.example", KindWildcard, "xn--bcher-kva.example", "", 0},
		{"203.0.113.7", KindPrefix, "", "203.0.113.7/32", 0},
		{"203.0.113.7:8080", KindPrefix, "", "203.0.113.7/32", 8080},
		{"10.20.0.0/16", KindPrefix, "", "10.20.0.0/16", 0},
		{"10.20.0.0/16:443", KindPrefix, "", "10.20.0.0/16", 443},
		{"2001:db8::1", KindPrefix, "", "2001:db8::1/128", 0},
		{"2001:db8::/32", KindPrefix, "", "2001:db8::/32", 0},
		{"[2001:db8::1]", KindPrefix, "", "2001:db8::1/128", 0},
		{"[2001:db8::1]:8443", KindPrefix, "", "2001:db8::1/128", 8443},
		{"[2001:db8::/32]:443", KindPrefix, "", "2001:db8::/32", 443},
		{"::ffff:127.0.0.1", KindPrefix, "", "127.0.0.1/32", 0},
		{"::ffff:10.0.0.0/104", KindPrefix, "", "10.0.0.0/8", 0},
	}
	for _, tt := range tests {
		t.Run(tt.text, func(t *testing.T) {
			r, err := ParseRule(tt.text)
			if err != nil {
				t.Fatalf("ParseRule(%q) error: %v", tt.text, err)
			}
			if r.Kind != tt.kind || r.Host != tt.host || r.Port != tt.port {
				t.Errorf("ParseRule(%q) = kind %d host %q port %d; want kind %d host %q port %d",
					tt.text, r.Kind, r.Host, r.Port, tt.kind, tt.host, tt.port)
			}
			if tt.prefix != "" && r.Prefix != netip.MustParsePrefix(tt.prefix) {
				t.Errorf("ParseRule(%q).Prefix = %v; want %v", tt.text, r.Prefix, tt.prefix)
			}
		})
	}
}

func TestParseRuleRejects(t *testing.T) {
	tests := []struct {
		text string
		want string
	}{
		{"*", `a bare wildcard would allow every host; list the domains you need, such as "*.example.com"`},
		{"*.", `a bare wildcard would allow every host; list the domains you need, such as "*.example.com"`},
		{"*.*.example.com", `only one wildcard is allowed, as the leftmost label; write "*.example.com"`},
		{"a.*.example.com", `a wildcard must be the whole leftmost label; write "*.example.com"`},
		{"*foo.example.com", `a wildcard must be the whole leftmost label; write "*.example.com"`},
		{"foo*.example.com", `a wildcard must be the whole leftmost label; write "*.example.com"`},
		{"foo*.example.com:8443", `a wildcard must be the whole leftmost label; write "*.example.com:8443"`},
		{"*.com", `a wildcard directly over the public suffix "com" would allow every domain under it; list the domains you need, such as "*.example.com"`},
		{"*.co.uk", `a wildcard directly over the public suffix "co.uk" would allow every domain under it; list the domains you need, such as "*.example.co.uk"`},
		{"*.github.io", `a wildcard directly over the public suffix "github.io" would allow every domain under it; list the domains you need, such as "*.example.github.io"`},
		{"*.10.0.0.1", `a wildcard cannot cover an IP address; use a CIDR such as 10.20.0.0/16`},
		{"a..example.com", `empty label; remove the extra dot`},
		{".example.com", `empty label; remove the extra dot`},
		{"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example.com", `label "aaaaaaaaaaaaaaaa..." is 64 characters long; a label has at most 63`},
		{"exa!mple.com", `invalid character '!'; a host name has letters, digits, '-', '_' and '.'`},
		{"-bad.example.com", `label "-bad" starts or ends with '-'`},
		{"example.com:0", `invalid port "0": a port is a number from 1 to 65535`},
		{"example.com:65536", `invalid port "65536": a port is a number from 1 to 65535`},
		{"example.com:http", `invalid port "http": a port is a number from 1 to 65535`},
		{"example.com:", `invalid port "": a port is a number from 1 to 65535`},
		{"example.com:080", `invalid port "080": a port is a number from 1 to 65535`},
		{"10.0.0.0/33", `invalid CIDR "10.0.0.0/33"; write an address and a prefix length, such as 10.20.0.0/16 or 2001:db8::/32`},
		{"10.20.1.0/16", `10.20.1.0/16 has bits set after the prefix length; write 10.20.0.0/16`},
		{"2001:db8::1/32", `2001:db8::1/32 has bits set after the prefix length; write 2001:db8::/32`},
		{"127.1", `"127.1" is not a canonical IPv4 address; write it as four decimal numbers, such as 127.0.0.1`},
		{"0177.0.0.1", `"0177.0.0.1" is not a canonical IPv4 address; write it as four decimal numbers, such as 127.0.0.1`},
		{"１２７.０.０.１", `"１２７.０.０.１" normalizes to "127.0.0.1", an IP address; write the address itself`},
		{"[2001:db8::1", `missing ']' after an IPv6 address`},
		{"[2001:db8::1]x", `unexpected "x" after ']'; write [address]:port`},
		{"https://example.com/x", `a rule is a host, not a URL; write "example.com"`},
		{"http://example.com:8080", `a rule is a host, not a URL; write "example.com:8080"`},
		{"example.com/x", `a rule is a host without a path; write "example.com"`},
		{"a.example.com b.example.com", `one rule per line; remove the space or put the second rule on its own line`},
	}
	for _, tt := range tests {
		t.Run(tt.text, func(t *testing.T) {
			r, err := ParseRule(tt.text)
			if err == nil {
				t.Fatalf("ParseRule(%q) = %+v; want error %q", tt.text, r, tt.want)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("ParseRule(%q) error:\n got %s\nwant %s", tt.text, got, tt.want)
			}
		})
	}
}

func TestNormalizeHostAgrees(t *testing.T) {
	// Rules and request hosts go through the same normalization, so every spelling of
	// a name matches the rule for it.
	spellings := []string{"BÜCHER.example.", "bücher.example", "xn--bcher-kva.example", "XN--BCHER-KVA.EXAMPLE."}
	for _, s := range spellings {
		got, err := NormalizeHost(s)
		if err != nil || got != "xn--bcher-kva.example" {
			t.Errorf("NormalizeHost(%q) = %q, %v; want %q", s, got, err, "xn--bcher-kva.example")
		}
	}
}
