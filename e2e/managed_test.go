package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestManagedAllowlist: rules added and removed through the CLI and the admin API are
// validated like file rules, in force when answered, named managed:<rule>, kept in
// their file across a restart; file rules stay read-only.
func TestManagedAllowlist(t *testing.T) {
	t.Parallel()
	origin := httpOrigin(t)
	target := origin.Listener.Addr().String()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "admin.token"), "managed-token\n")
	cfg := daemonConfig{
		files: map[string]string{"allow.d/a.txt": "file-rule.example.com\n"},
		extra: fmt.Sprintf("admin:\n  listen: 127.0.0.1:0\n  token_file: %s\nmanaged_allowlist:\n  file: %s\n",
			filepath.Join(dir, "admin.token"), filepath.Join(dir, "managed.txt")),
	}
	d := startDaemon(t, cfg)
	env := []string{"EGRESSD_ADMIN_TOKEN=managed-token"}
	admin := d.admin // the running egressd's; a restart changes it
	al := func(args ...string) execResult {
		t.Helper()
		return execInEnv(t, dir, env, nil, append([]string{"allowlist"}, append(args, "--admin", "http://"+admin)...)...)
	}
	if got := d.status("http://" + target + "/"); got != 403 {
		t.Fatalf("before: %d; want 403", got)
	}
	if r := al("add", target); r.code != 0 || !strings.Contains(r.stdout, "added "+target) {
		t.Fatalf("allowlist add: %d %s %s", r.code, r.stdout, r.stderr)
	}
	if got := d.status("http://" + target + "/"); got != 200 {
		t.Errorf("right after add: %d; want 200 (in force when answered)", got)
	}
	d.waitLog(`"rule_at":"managed:`+target+`"`, 5*time.Second)
	if out, _, code := egressd(t, d.dir, "explain", "--config", "egressd.yaml", target); code != 0 || !strings.Contains(out, "rule: "+target+" (managed:"+target+")") {
		t.Errorf("explain of a managed rule: exit %d\n%s", code, out)
	}
	if r := al("add", target); r.code != 1 || !strings.Contains(r.stderr, "already managed") {
		t.Errorf("adding it again: %d %s", r.code, r.stderr)
	}
	if r := al("add", "*.*.example.com"); r.code != 1 || !strings.Contains(r.stderr, `only one wildcard is allowed, as the leftmost label; write "*.example.com"`) {
		t.Errorf("an invalid rule: %d %s; want the file parser's message", r.code, r.stderr)
	}
	if r := al("add", "10.20.0.0/16:5432"); r.code != 0 {
		t.Errorf("a CIDR rule with a port: %d %s", r.code, r.stderr)
	}
	if r := al("list"); !strings.Contains(r.stdout, target) || !strings.Contains(r.stdout, "managed") || !strings.Contains(r.stdout, "a.txt:1") {
		t.Errorf("allowlist list:\n%s", r.stdout)
	}
	if r := al("remove", "file-rule.example.com"); r.code != 1 || !strings.Contains(r.stderr, "file rules belong to their file") {
		t.Errorf("removing a file rule: %d %s", r.code, r.stderr)
	}
	if r := al("remove", "10.20.0.0/16:5432"); r.code != 0 {
		t.Errorf("removing a rule with a slash: %d %s", r.code, r.stderr)
	}

	// A restart keeps the managed rules.
	d.cmd.Process.Kill()
	<-d.done
	d2 := startDaemon(t, daemonConfig{files: cfg.files, extra: cfg.extra})
	if got := d2.status("http://" + target + "/"); got != 200 {
		t.Errorf("after a restart: %d; want the managed rule in force", got)
	}
	admin = d2.admin
	if r := al("remove", target); r.code != 0 {
		t.Fatalf("allowlist remove: %d %s", r.code, r.stderr)
	}
	if got := d2.status("http://" + target + "/"); got != 403 {
		t.Errorf("right after remove: %d; want 403", got)
	}
}
