package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/etcdtest"
)

// clusterReplica starts an egressd in cluster mode on etcd at endpoint, with its
// admin API, and returns it with an allowlist command against it.
func clusterReplica(t *testing.T, endpoint string) (*daemon, func(args ...string) execResult) {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "admin.token"), "cluster-token\n")
	d := startDaemon(t, daemonConfig{
		files: map[string]string{"allow.d/a.txt": "file-rule.example.com\n"},
		extra: fmt.Sprintf("admin:\n  listen: 127.0.0.1:0\n  token_file: %s\ncluster:\n  etcd:\n    endpoints: [%s]\n    prefix: /e2e/\n    dial_timeout: 1s\n",
			filepath.Join(dir, "admin.token"), endpoint),
	})
	var started struct{ Admin string }
	json.Unmarshal([]byte(d.logs.find(`"msg":"egressd started"`)), &started)
	return d, func(args ...string) execResult {
		t.Helper()
		return execInEnv(t, dir, []string{"EGRESSD_ADMIN_TOKEN=cluster-token"}, nil,
			append([]string{"allowlist"}, append(args, "--admin", "http://"+started.Admin)...)...)
	}
}

// TestClusterManagedAllowlist: three replicas on one etcd. A rule added through one
// is in force on every one within a second; during an outage of etcd the policy in
// force stays, /readyz stays ready, writes fail with 503, and nothing is
// acknowledged; after it everything resumes with no acknowledged change lost.
func TestClusterManagedAllowlist(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.Start(t)
	origin := httpOrigin(t)
	target := origin.Listener.Addr().String()
	a, addA := clusterReplica(t, etcd.Endpoint)
	b, _ := clusterReplica(t, etcd.Endpoint)
	c, addC := clusterReplica(t, etcd.Endpoint)

	for _, d := range []*daemon{a, b, c} {
		if got := d.status("http://" + target + "/"); got != 403 {
			t.Fatalf("before any rule: %d; want 403", got)
		}
	}
	if r := addA("add", target); r.code != 0 {
		t.Fatalf("allowlist add on A: %d %s %s", r.code, r.stdout, r.stderr)
	}
	if got := a.status("http://" + target + "/"); got != 200 {
		t.Errorf("on A right after add: %d; want 200", got)
	}
	for name, d := range map[string]*daemon{"B": b, "C": c} {
		if took := d.waitStatus("http://"+target+"/", 200); took > time.Second {
			t.Errorf("the rule reached %s after %s; want within 1s", name, took)
		} else {
			t.Logf("the rule in force on %s after %s", name, took)
		}
	}
	if r := addC("add", target); r.code != 1 || !strings.Contains(r.stderr, "already managed") {
		t.Errorf("adding on C what A added: %d %s", r.code, r.stderr)
	}
	if r := addC("list"); !strings.Contains(r.stdout, target) || !strings.Contains(r.stdout, "a.txt:1") {
		t.Errorf("allowlist list on C:\n%s", r.stdout)
	}
	if r := addC("remove", "file-rule.example.com"); r.code != 1 || !strings.Contains(r.stderr, "file rules belong to their file") {
		t.Errorf("removing a file rule: %d %s", r.code, r.stderr)
	}

	// The outage.
	etcd.Stop()
	b.waitLog("etcd is unreachable", 10*time.Second)
	if r := addA("add", "during.example.com"); r.code == 0 || !strings.Contains(r.stderr, "503") || !strings.Contains(r.stderr, "nothing was changed") {
		t.Errorf("add during the outage: %d %s; want a 503 saying nothing was changed", r.code, r.stderr)
	}
	if r := addA("remove", target); r.code == 0 || !strings.Contains(r.stderr, "503") {
		t.Errorf("remove during the outage: %d %s; want 503", r.code, r.stderr)
	}
	for name, d := range map[string]*daemon{"A": a, "B": b, "C": c} {
		if got := d.status("http://" + target + "/"); got != 200 {
			t.Errorf("proxying on %s during the outage: %d; want the policy in force (200)", name, got)
		}
		if v := d.metric("egressd_cluster_connected"); v != 0 {
			t.Errorf("egressd_cluster_connected on %s during the outage = %v; want 0", name, v)
		}
		resp, err := http.Get("http://" + d.metrics + "/readyz")
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("/readyz on %s during the outage: %v %v; want 200", name, resp, err)
		}
		if resp != nil {
			resp.Body.Close()
		}
	}

	etcd.Restart()
	c.waitLog("etcd is reachable again", 15*time.Second)
	if n := c.logs.count("etcd is unreachable"); n != 1 {
		t.Errorf("the outage was logged %d times; want once", n)
	}
	if r := addC("remove", target); r.code != 0 {
		t.Fatalf("remove on C after the outage: %d %s", r.code, r.stderr)
	}
	for name, d := range map[string]*daemon{"A": a, "B": b} {
		d.waitStatus("http://"+target+"/", 403)
		if v := d.metric("egressd_cluster_connected"); v != 1 {
			t.Errorf("egressd_cluster_connected on %s after the outage = %v; want 1", name, v)
		}
	}
	if r := addA("list"); strings.Contains(r.stdout, "during.example.com") {
		t.Errorf("a change refused during the outage was made:\n%s", r.stdout)
	}
}

// TestClusterUnreachableAtStart: serve refuses to start, naming the endpoints.
func TestClusterUnreachableAtStart(t *testing.T) {
	t.Parallel()
	dir := writeConfig(t, daemonConfig{extra: "cluster:\n  etcd:\n    endpoints: [http://127.0.0.1:1]\n    dial_timeout: 500ms\n"})
	_, stderr, code := egressd(t, dir, "serve", "--config", "egressd.yaml")
	if code == 0 || !strings.Contains(stderr, "cannot reach etcd at http://127.0.0.1:1") {
		t.Errorf("serve with etcd unreachable: exit %d\n%s", code, stderr)
	}
	if out, errOut, code := egressd(t, dir, "check", "--config", "egressd.yaml"); code != 0 {
		t.Errorf("check (which dials nothing) of a valid cluster section: exit %d\n%s%s", code, out, errOut)
	}
}
