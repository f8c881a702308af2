package e2e

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "good.yaml"), "allowlist: [good.d]\n")
	writeFile(t, filepath.Join(dir, "good.d/a.txt"), "api.example.com\n*.example.net\napi.example.com\n")
	writeFile(t, filepath.Join(dir, "bad.yaml"), "allowlist: [bad.d]\n")
	writeFile(t, filepath.Join(dir, "bad.d/a.txt"), "ok.example.com\n*.*.example.com\n")
	writeFile(t, filepath.Join(dir, "bad.d/b.txt"), "https://example.com/x\n\n*.com\n")
	writeFile(t, filepath.Join(dir, "typo.yaml"), "allowlist: [good.d]\nproxy:\n  listn: 127.0.0.1:3128\n")

	tests := []struct {
		name       string
		args       []string
		code       int
		stdout     string   // exact
		stderrHave []string // each must appear
	}{
		{name: "valid", args: []string{"check", "--config", "good.yaml"}, code: 0,
			stdout:     "ok: 2 rules from 1 file, 1 warning\n", // the duplicate counts once
			stderrHave: []string{`warning: good.d/a.txt:3: "api.example.com": duplicate of "api.example.com" at good.d/a.txt:1; the first one is used`}},
		{name: "every error of every file", args: []string{"check", "--config", "bad.yaml"}, code: 1,
			stderrHave: []string{
				`bad.d/a.txt:2: "*.*.example.com": only one wildcard is allowed, as the leftmost label; write "*.example.com"`,
				`bad.d/b.txt:1: "https://example.com/x": a rule is a host, not a URL; write "example.com"`,
				`bad.d/b.txt:3: "*.com": a wildcard directly over the public suffix "com"`,
				"egressd check: 3 errors in the allowlist",
			}},
		{name: "unknown config key", args: []string{"check", "--config", "typo.yaml"}, code: 1,
			stderrHave: []string{`typo.yaml:3: unknown key "listn"`}},
		{name: "missing config", args: []string{"check", "--config", "nope.yaml"}, code: 1,
			stderrHave: []string{"nope.yaml: no such file or directory"}},
		{name: "help", args: []string{"check", "--help"}, code: 0,
			stderrHave: []string{"Usage: egressd check [--config FILE]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, code := egressd(t, dir, tt.args...)
			if code != tt.code {
				t.Errorf("egressd %v exit = %d; want %d\nstdout: %s\nstderr: %s", tt.args, code, tt.code, stdout, stderr)
			}
			if tt.stdout != "" && stdout != tt.stdout {
				t.Errorf("egressd %v stdout = %q; want %q", tt.args, stdout, tt.stdout)
			}
			for _, want := range tt.stderrHave {
				if !strings.Contains(stderr, want) {
					t.Errorf("egressd %v stderr lacks %q; got:\n%s", tt.args, want, stderr)
				}
			}
		})
	}
}

func TestExplain(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "egressd.yaml"), "allowlist: [allow.txt]\n")
	writeFile(t, filepath.Join(dir, "allow.txt"), "# rules\nexample.com\n*.wild.example.com\npayments.example.org:8443\n10.20.0.0/16\n")
	writeFile(t, filepath.Join(dir, "broken.yaml"), "allowlist: [broken.txt]\n")
	writeFile(t, filepath.Join(dir, "broken.txt"), "*\n")

	tests := []struct {
		target string
		code   int
		stdout string
	}{
		{"example.com", 0, "allowed: example.com:443\nrule: example.com (allow.txt:2)\n"},
		{"https://a.b.wild.example.com/path", 0, "allowed: a.b.wild.example.com:443\nrule: *.wild.example.com (allow.txt:3)\n"},
		{"payments.example.org:8443", 0, "allowed: payments.example.org:8443\nrule: payments.example.org:8443 (allow.txt:4)\n"},
		{"10.20.1.2:443", 0, "allowed: 10.20.1.2:443\nrule: 10.20.0.0/16 (allow.txt:5)\n"},
		{"www.example.com", 1, "denied: www.example.com:443: not on the allowlist\nhint: example.com (allow.txt:2) does not cover its subdomains; add www.example.com or *.example.com\n"},
		{"wild.example.com", 1, "denied: wild.example.com:443: not on the allowlist\nhint: a wildcard does not cover the domain itself (*.wild.example.com at allow.txt:3); add wild.example.com\n"},
		{"http://payments.example.org/", 1, "denied: payments.example.org:80: port not allowed\nhint: payments.example.org is allowed on port 8443 only (payments.example.org:8443 at allow.txt:4); add payments.example.org:80\n"},
		{"198.51.100.7", 1, "denied: 198.51.100.7:443: ip address not on the allowlist\nhint: an IP address is reached only through an IP or CIDR rule; add 198.51.100.7 (or a CIDR that contains it), or use the host name\n"},
		{"0x7f000001:80", 1, "denied: 0x7f000001:80: non-canonical ip address\nhint: write IP addresses in canonical form, such as 127.0.0.1; other spellings are always denied\n"},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			stdout, stderr, code := egressd(t, dir, "explain", "--config", "egressd.yaml", tt.target)
			if code != tt.code || stdout != tt.stdout {
				t.Errorf("explain %s = exit %d, stdout:\n%s\nwant exit %d, stdout:\n%s\nstderr: %s", tt.target, code, stdout, tt.code, tt.stdout, stderr)
			}
		})
	}

	usage := []struct {
		name string
		args []string
	}{
		{"no target", []string{"explain", "--config", "egressd.yaml"}},
		{"two targets", []string{"explain", "--config", "egressd.yaml", "a.example.com", "b.example.com"}},
		{"bad port", []string{"explain", "--config", "egressd.yaml", "a.example.com:99999"}},
		{"broken allowlist", []string{"explain", "--config", "broken.yaml", "example.com"}},
		{"unknown flag", []string{"explain", "--cofnig", "egressd.yaml", "example.com"}},
	}
	for _, tt := range usage {
		t.Run(tt.name, func(t *testing.T) {
			if _, stderr, code := egressd(t, dir, tt.args...); code != 2 || stderr == "" {
				t.Errorf("egressd %v = exit %d, stderr %q; want exit 2 and a message", tt.args, code, stderr)
			}
		})
	}
	// Flags may follow the target.
	if stdout, _, code := egressd(t, dir, "explain", "example.com", "--config", "egressd.yaml"); code != 0 || !strings.HasPrefix(stdout, "allowed:") {
		t.Errorf("explain example.com --config egressd.yaml = exit %d, %q; want allowed", code, stdout)
	}
}

// TestBuiltInConfig runs egressd from a directory with no config in it: the
// configuration embedded in the binary is used.
func TestBuiltInConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	stdout, stderr, code := egressd(t, dir, "check")
	if code != 0 || !strings.HasPrefix(stdout, "ok: 7 rules from 1 file") {
		t.Errorf("check with the built-in config = exit %d, %q, %q; want ok with 7 rules", code, stdout, stderr)
	}
	stdout, _, code = egressd(t, dir, "explain", "api.github.com")
	if code != 0 || !strings.Contains(stdout, "rule: api.github.com (allowlist.d/default.txt:") {
		t.Errorf("explain api.github.com with the built-in config = exit %d, %q; want allowed", code, stdout)
	}
	if stdout, _, code := egressd(t, dir, "version"); code != 0 || !strings.HasPrefix(stdout, "egressd ") {
		t.Errorf("version = exit %d, %q", code, stdout)
	}
	if _, stderr, code := egressd(t, dir, "frobnicate"); code != 2 || !strings.Contains(stderr, `unknown command "frobnicate"`) {
		t.Errorf("unknown command = exit %d, %q; want 2", code, stderr)
	}
	if stdout, _, code := egressd(t, dir, "--help"); code != 0 || !strings.Contains(stdout, "egressd explain") {
		t.Errorf("--help = exit %d, %q", code, stdout)
	}
}
