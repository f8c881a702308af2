package policy

import (
	"strings"
	"testing"
)

var fuzzSeeds = []string{
	"api.example.com", "*.example.com", "*.example.com:8443", "payments.example.org:8443",
	"203.0.113.7", "10.20.0.0/16", "[2001:db8::1]:443", "2001:db8::/32", "BÜCHER.example.",
	"*", "*.*.example.com", "a.*.b", "*.com", "127.1", "0x7f000001", "https://example.com/x",
	"example.com/x", "a..b", "[::1", "::ffff:10.0.0.0/104", "xn--", "-.-", "*.xn--bcher-kva.example",
}

// FuzzParseRule checks that ParseRule never panics, and that what it accepts is
// stable: the normalized form of an accepted rule parses to the same rule again.
func FuzzParseRule(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		r, err := ParseRule(text)
		if err != nil {
			if err.Error() == "" {
				t.Fatalf("ParseRule(%q) returned an empty error", text)
			}
			return
		}
		again, err := ParseRule(r.key())
		if err != nil {
			t.Fatalf("ParseRule(%q) accepted as %q, which is rejected: %v", text, r.key(), err)
		}
		if again.key() != r.key() {
			t.Fatalf("ParseRule(%q).key() = %q; reparsed %q", text, r.key(), again.key())
		}
		if r.Kind == KindWildcard && strings.Contains(r.Host, "*") {
			t.Fatalf("ParseRule(%q) kept a '*' in the wildcard domain %q", text, r.Host)
		}
	})
}

// FuzzMatch checks that Decide never panics, that an allowed decision names a rule,
// and that a denial always has a hint.
func FuzzMatch(f *testing.F) {
	m := loadTestMatcher(f)
	for _, s := range fuzzSeeds {
		f.Add(s, uint16(443))
	}
	f.Add("a.b.c.wild.example.com", uint16(80))
	f.Add("fe80::1%eth0", uint16(80))
	f.Fuzz(func(t *testing.T, host string, port uint16) {
		d := m.Decide(host, port)
		if d.Allow && d.Rule == nil {
			t.Fatalf("Decide(%q, %d) allowed with no rule", host, port)
		}
		if !d.Allow && d.Hint() == "" {
			t.Fatalf("Decide(%q, %d) denied (%s) with no hint", host, port, d.Reason)
		}
		if d.Allow && d.Rule.Kind == KindExact && d.Rule.Host != d.Host {
			t.Fatalf("Decide(%q, %d) allowed by exact rule %q for host %q", host, port, d.Rule.Text, d.Host)
		}
	})
}
