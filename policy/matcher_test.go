package policy

import (
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
)

func loadTestMatcher(t testing.TB) *Matcher {
	t.Helper()
	res, err := Load(OSFiles{}, []string{"testdata/load/allow.txt"}, Options{})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return res.Matcher
}

func TestDecide(t *testing.T) {
	m := loadTestMatcher(t)
	tests := []struct {
		host   string
		port   uint16
		allow  bool
		reason Reason
		line   int    // the deciding rule's line, for allowed targets
		hint   string // for denials
	}{
		{host: "example.com", port: 443, allow: true, line: 2},
		{host: "EXAMPLE.COM.", port: 80, allow: true, line: 2},
		{host: "api.example.com", port: 443, allow: true, line: 3},
		{host: "a.wild.example.com", port: 443, allow: true, line: 4},
		{host: "a.b.c.wild.example.com", port: 80, allow: true, line: 4},
		{host: "payments.example.org", port: 8443, allow: true, line: 5},
		{host: "x.ports.example.net", port: 9000, allow: true, line: 6},
		{host: "BÜCHER.example.", port: 443, allow: true, line: 7},
		{host: "xn--bcher-kva.example", port: 443, allow: true, line: 7},
		{host: "203.0.113.7", port: 443, allow: true, line: 8},
		{host: "10.20.3.4", port: 5432, allow: true, line: 9},
		{host: "127.0.0.1", port: 80, allow: true, line: 10},
		{host: "::ffff:127.0.0.1", port: 80, allow: true, line: 10},
		{host: "[2001:db8::5]", port: 443, allow: true, line: 11},
		{host: "2001:db8:1::1", port: 8443, allow: true, line: 12},

		{host: "www.example.com", port: 443, reason: ReasonNotListed,
			hint: `example.com (testdata/load/allow.txt:2) does not cover its subdomains; add www.example.com or *.example.com`},
		{host: "a.b.api.example.com", port: 443, reason: ReasonNotListed,
			hint: `api.example.com (testdata/load/allow.txt:3) does not cover its subdomains; add a.b.api.example.com or *.api.example.com`},
		{host: "wild.example.com", port: 443, reason: ReasonNotListed,
			hint: `a wildcard does not cover the domain itself (*.wild.example.com at testdata/load/allow.txt:4); add wild.example.com`},
		{host: "api.example.com", port: 8443, reason: ReasonPort,
			hint: `api.example.com is allowed on ports 80, 443 only (api.example.com at testdata/load/allow.txt:3); add api.example.com:8443`},
		{host: "payments.example.org", port: 443, reason: ReasonPort,
			hint: `payments.example.org is allowed on port 8443 only (payments.example.org:8443 at testdata/load/allow.txt:5); add payments.example.org:443`},
		{host: "x.ports.example.net", port: 443, reason: ReasonPort,
			hint: `x.ports.example.net is allowed on port 9000 only (*.ports.example.net:9000 at testdata/load/allow.txt:6); add x.ports.example.net:443`},
		{host: "10.20.3.4", port: 443, reason: ReasonPort,
			hint: `10.20.3.4 is allowed on port 5432 only (10.20.0.0/16:5432 at testdata/load/allow.txt:9); add 10.20.3.4:443`},
		{host: "other.example.net", port: 443, reason: ReasonNotListed,
			hint: `add other.example.net to an allowlist file`},
		{host: "other.example.net", port: 8080, reason: ReasonNotListed,
			hint: `add other.example.net:8080 to an allowlist file`},
		{host: "198.51.100.1", port: 443, reason: ReasonIPNotListed,
			hint: `an IP address is reached only through an IP or CIDR rule; add 198.51.100.1 (or a CIDR that contains it), or use the host name`},
		{host: "2001:db9::1", port: 8080, reason: ReasonIPNotListed,
			hint: `an IP address is reached only through an IP or CIDR rule; add [2001:db9::1]:8080 (or a CIDR that contains it), or use the host name`},
		// Non-canonical IPv4 spellings are denied outright, even inside 127.0.0.0/8.
		{host: "127.1", port: 80, reason: ReasonNonCanonicalIP},
		{host: "0x7f000001", port: 80, reason: ReasonNonCanonicalIP},
		{host: "2130706433", port: 80, reason: ReasonNonCanonicalIP},
		{host: "0177.0.0.1", port: 80, reason: ReasonNonCanonicalIP},
		{host: "127.0.0.1.", port: 80, reason: ReasonNonCanonicalIP},
		{host: "fe80::1%eth0", port: 80, reason: ReasonNonCanonicalIP},
		{host: "１２７.０.０.１", port: 80, allow: true, line: 10}, // fullwidth digits are the address
		{host: "１２７.１", port: 80, reason: ReasonNonCanonicalIP},
		{host: "a..example.com", port: 80, reason: ReasonInvalidHost},
		{host: "", port: 80, reason: ReasonInvalidHost},
	}
	for _, tt := range tests {
		t.Run(tt.host+":"+itoa(tt.port), func(t *testing.T) {
			d := m.Decide(tt.host, tt.port)
			if d.Allow != tt.allow {
				t.Fatalf("Decide(%q, %d).Allow = %v (%s, %s); want %v", tt.host, tt.port, d.Allow, d.Reason, d.Hint(), tt.allow)
			}
			if tt.allow {
				if d.Rule == nil || d.Rule.Line != tt.line || d.Reason != ReasonAllowed {
					t.Errorf("Decide(%q, %d) = rule %v, reason %q; want line %d, %q", tt.host, tt.port, d.Rule, d.Reason, tt.line, ReasonAllowed)
				}
				return
			}
			if d.Reason != tt.reason {
				t.Errorf("Decide(%q, %d).Reason = %q; want %q", tt.host, tt.port, d.Reason, tt.reason)
			}
			if tt.hint != "" && d.Hint() != tt.hint {
				t.Errorf("Decide(%q, %d).Hint() =\n %s\nwant\n %s", tt.host, tt.port, d.Hint(), tt.hint)
			}
			if d.Hint() == "" {
				t.Errorf("Decide(%q, %d).Hint() is empty; every denial needs a hint", tt.host, tt.port)
			}
		})
	}
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }

func TestAllowsName(t *testing.T) {
	m := loadTestMatcher(t)
	tests := []struct {
		host string
		want bool
	}{
		{"example.com", true},
		{"EXAMPLE.com.", true},
		{"payments.example.org", true}, // its rule names port 8443 only: still a name to resolve
		{"x.ports.example.net", true},
		{"a.b.wild.example.com", true},
		{"wild.example.com", false},
		{"www.example.com", false},
		{"127.0.0.1", false},
		{"a..b", false},
	}
	for _, tt := range tests {
		if got := m.AllowsName(tt.host); got != tt.want {
			t.Errorf("AllowsName(%q) = %v; want %v", tt.host, got, tt.want)
		}
	}
}

func TestAllowedPortsOption(t *testing.T) {
	rules := mustParse(t, "api.example.com", "*.example.net")
	m, _ := Compile(rules, Options{AllowedPorts: []uint16{8080}})
	if d := m.Decide("api.example.com", 8080); !d.Allow {
		t.Errorf("Decide(api.example.com, 8080) denied (%s); want allowed by the configured default port", d.Reason)
	}
	if d := m.Decide("api.example.com", 443); d.Allow {
		t.Errorf("Decide(api.example.com, 443) allowed; want denied: 443 is not a configured port")
	}
}

func TestWildcardAndExactPortsCombine(t *testing.T) {
	// An exact rule that does not allow the port does not hide a wildcard that does.
	m, _ := Compile(mustParse(t, "api.example.com", "*.example.com:8443"), Options{})
	d := m.Decide("api.example.com", 8443)
	if !d.Allow || d.Rule.Text != "*.example.com:8443" {
		t.Errorf("Decide(api.example.com, 8443) = %v by %v; want allowed by *.example.com:8443", d.Allow, d.Rule)
	}
}

func TestDuplicatesWarn(t *testing.T) {
	res, err := Load(OSFiles{}, []string{"testdata/dup"}, Options{})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := []string{
		`testdata/dup/a.txt:3: "Example.COM.": duplicate of "example.com" at testdata/dup/a.txt:1; the first one is used`,
		`testdata/dup/b.txt:1: "*.example.com:443": duplicate of "*.example.com:443" at testdata/dup/a.txt:2; the first one is used`,
	}
	if len(res.Warnings) != len(want) {
		t.Fatalf("Load warnings = %q; want %q", res.Warnings, want)
	}
	for i, w := range res.Warnings {
		if w.Error() != want[i] {
			t.Errorf("warning %d = %s; want %s", i, w.Error(), want[i])
		}
	}
}

// TestLoadInvalid loads each testdata/invalid/*.txt and compares every error with the
// file's .err twin: all errors of a file are reported, in order, with file:line.
func TestLoadInvalid(t *testing.T) {
	entries, err := os.ReadDir("testdata/invalid")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".txt")
		if !ok {
			continue
		}
		n++
		t.Run(name, func(t *testing.T) {
			path := "testdata/invalid/" + e.Name()
			wantBytes, err := os.ReadFile("testdata/invalid/" + name + ".err")
			if err != nil {
				t.Fatal(err)
			}
			res, err := Load(OSFiles{}, []string{path}, Options{})
			if err == nil {
				t.Fatalf("Load(%s) = %d rules; want errors", path, len(res.Matcher.Rules()))
			}
			if got, want := err.Error(), strings.TrimSpace(string(wantBytes)); got != want {
				t.Errorf("Load(%s) errors:\n%s\nwant:\n%s", path, got, want)
			}
		})
	}
	if n == 0 {
		t.Fatal("no testdata/invalid cases found")
	}
}

func TestLoadDirectorySkipsDotEntries(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		t.Helper()
		if err := os.WriteFile(dir+"/"+name, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A ConfigMap mount: ..data points at a timestamped directory; the visible names
	// are links through ..data.
	if err := os.Mkdir(dir+"/..2026_11_26_01", 0o755); err != nil {
		t.Fatal(err)
	}
	write("..2026_11_26_01/allow.txt", "cm.example.com\n")
	write(".hidden.txt", "*\n") // invalid, and skipped
	for _, l := range [][2]string{{"..2026_11_26_01", dir + "/..data"}, {"..data/allow.txt", dir + "/allow.txt"}} {
		if err := os.Symlink(l[0], l[1]); err != nil {
			t.Fatal(err)
		}
	}
	res, err := Load(OSFiles{}, []string{dir}, Options{})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got := res.Files; len(got) != 1 || got[0] != dir+"/allow.txt" {
		t.Errorf("Load files = %q; want [%s/allow.txt]", got, dir)
	}
	if d := res.Matcher.Decide("cm.example.com", 443); !d.Allow {
		t.Errorf("Decide(cm.example.com) denied; want allowed by the ConfigMap file")
	}
}

func TestLoadMissingPath(t *testing.T) {
	_, err := Load(OSFiles{}, []string{"testdata/nonexistent.d"}, Options{})
	want := "testdata/nonexistent.d: no such file or directory; check the allowlist paths in the config"
	if err == nil || err.Error() != want {
		t.Errorf("Load(missing) error = %v; want %s", err, want)
	}
}

func mustParse(t testing.TB, texts ...string) []Rule {
	t.Helper()
	var rules []Rule
	for i, s := range texts {
		r, err := ParseRule(s)
		if err != nil {
			t.Fatalf("ParseRule(%q): %v", s, err)
		}
		r.Line = i + 1
		rules = append(rules, r)
	}
	return rules
}

func TestExempt(t *testing.T) {
	m := loadTestMatcher(t)
	tests := []struct {
		addr string
		want bool
	}{
		{"127.0.0.5", true},        // 127.0.0.0/8
		{"10.20.9.9", true},        // 10.20.0.0/16:5432: the range counts, not the port
		{"::ffff:127.0.0.1", true}, // mapped, checked as IPv4
		{"10.21.0.1", false},
		{"169.254.169.254", false},
	}
	for _, tt := range tests {
		if got := m.Exempt(netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("Exempt(%s) = %v; want %v", tt.addr, got, tt.want)
		}
	}
	var none *Matcher
	if none.Exempt(netip.MustParseAddr("127.0.0.1")) {
		t.Error("a nil Matcher exempted an address")
	}
}
