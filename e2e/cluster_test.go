package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/etcdtest"
)

// clusterReplica starts an egressd in cluster mode on etcd at endpoint, with its
// admin API, and returns it with an allowlist command against it.
func clusterReplica(t *testing.T, endpoint string, extra ...string) (*daemon, func(args ...string) execResult) {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "admin.token"), "cluster-token\n")
	d := startDaemon(t, daemonConfig{
		files: map[string]string{"allow.d/a.txt": "file-rule.example.com\n"},
		extra: fmt.Sprintf("admin:\n  listen: 127.0.0.1:0\n  token_file: %s\ncluster:\n  etcd:\n    endpoints: [%s]\n    prefix: /e2e/\n    dial_timeout: 2s\n    session_ttl: 2s\n%s",
			filepath.Join(dir, "admin.token"), endpoint, strings.Join(extra, "")),
	})
	return d, func(args ...string) execResult {
		t.Helper()
		return execInEnv(t, dir, []string{"EGRESSD_ADMIN_TOKEN=cluster-token"}, nil,
			append([]string{"allowlist"}, append(args, "--admin", "http://"+d.admin)...)...)
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
	if r := addA("add", "during.example.com"); r.code == 0 || !strings.Contains(r.stderr, "503") || !strings.Contains(r.stderr, "not acknowledged") {
		t.Errorf("add during the outage: %d %s; want a 503 saying it was not acknowledged", r.code, r.stderr)
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

	cc, base, _ := consoleSession(t, a, "cluster-token")
	if resp, err := cc.Get(base + "/overview"); err == nil {
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(page), "<dt>etcd</dt><dd>unreachable") {
			t.Errorf("the console's overview during the outage:\n%s", page)
		}
	} else {
		t.Error(err)
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

// TestClusterSecrets: a file store migrated into etcd, then served by three
// replicas: an update through one is read through the others within a second,
// If-Match across replicas lets exactly one writer win, admin changes are shared.
func TestClusterSecrets(t *testing.T) {
	t.Parallel()
	etcd := startEtcdProcesses(t, 3)
	dir := t.TempDir()
	s := provisionSecrets(t, dir, map[string]string{"oauth-token": "from-the-file"})
	clusterYAML := fmt.Sprintf("admin:\n  listen: 127.0.0.1:0\n  token_file: %s\nsecrets:\n  key_file: %s\ncluster:\n  etcd:\n    endpoints: [%s]\n    dial_timeout: 1s\n",
		filepath.Join(dir, "admin.token"), s.keyFile, strings.Join(etcd.Endpoints, ", "))

	cfgDir := writeConfig(t, daemonConfig{extra: clusterYAML})
	migrate := func(extra ...string) execResult {
		return execIn(t, dir, nil, append([]string{"secrets", "migrate", "--from-file", s.file, "--key-file", s.keyFile, "--config", filepath.Join(cfgDir, "egressd.yaml")}, extra...)...)
	}
	if r := migrate(); r.code != 0 || !strings.Contains(r.stdout, "copied oauth-token (version 1)") {
		t.Fatalf("secrets migrate: %d %s %s", r.code, r.stdout, r.stderr)
	}

	var replicas []*daemon
	for range 3 {
		replicas = append(replicas, startDaemon(t, daemonConfig{extra: clusterYAML}))
	}
	plain := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	url := func(d *daemon) string { return "http://" + d.proxy + "/v1/secrets/oauth-token" }
	value := func(d *daemon) (string, int) {
		code, v := runtimeCall(t, plain, "GET", url(d), "")
		if code != 200 {
			return "", code
		}
		return fmt.Sprint(v["value"]), int(v["version"].(float64))
	}
	if v, ver := value(replicas[1]); v != "from-the-file" || ver != 1 {
		t.Fatalf("the migrated secret on B: %q version %d", v, ver)
	}

	code, _ := runtimeCall(t, plain, "PUT", url(replicas[0]), `{"value":"refreshed"}`, "If-Match", `"1"`)
	if code != 200 {
		t.Fatalf("PUT on A: %d", code)
	}
	start := time.Now()
	for _, d := range replicas[1:] {
		for i := 0; ; i++ {
			if v, ver := value(d); v == "refreshed" && ver == 2 {
				break
			}
			if i == 200 {
				t.Fatalf("the update never reached %s", d.proxy)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("the update reached B and C after %s; want within 1s", took)
	} else {
		t.Logf("the update read on B and C after %s", took)
	}

	// B and C update version 2 at once.
	codes := make(chan int, 2)
	for _, d := range replicas[1:] {
		go func() {
			code, _ := runtimeCall(t, plain, "PUT", url(d), `{"value":"racer"}`, "If-Match", `"2"`)
			codes <- code
		}()
	}
	if a, b := <-codes, <-codes; a+b != 200+412 {
		t.Errorf("two replicas updating one version: %d and %d; want 200 and 412", a, b)
	}

	env := []string{"EGRESSD_ADMIN_TOKEN=" + s.token}
	admin := func(d *daemon, stdin string, args ...string) execResult {
		return execInEnv(t, dir, env, strings.NewReader(stdin), append(append([]string{"secrets"}, args...), "--admin", "http://"+d.admin)...)
	}
	if r := admin(replicas[1], "db-pass", "create", "db-password"); r.code != 0 {
		t.Fatalf("create on B: %d %s", r.code, r.stderr)
	}
	if r := admin(replicas[2], "other", "create", "db-password"); r.code != 1 || !strings.Contains(r.stderr, "409") {
		t.Errorf("create on C of what B created: %d %s; want 409", r.code, r.stderr)
	}
	if r := admin(replicas[0], "", "delete", "oauth-token"); r.code != 0 {
		t.Fatalf("delete on A: %d %s", r.code, r.stderr)
	}
	for i := 0; ; i++ {
		if _, code := value(replicas[2]); code == 404 {
			break
		}
		if i == 200 {
			t.Fatal("the delete never reached C")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if r := admin(replicas[2], "", "list"); !strings.Contains(r.stdout, "db-password") || strings.Contains(r.stdout, "oauth-token") {
		t.Errorf("list on C:\n%s", r.stdout)
	}
	for _, d := range replicas {
		if strings.Contains(d.logs.String(), "from-the-file") || strings.Contains(d.logs.String(), "refreshed") {
			t.Errorf("a secret value in the log of %s", d.proxy)
		}
	}
	if r := migrate(); r.code != 0 || !strings.Contains(r.stdout, "copied oauth-token") {
		t.Errorf("migrating again after the delete: %d %s %s", r.code, r.stdout, r.stderr)
	}
	if r := migrate(); r.code != 0 || !strings.Contains(r.stdout, "kept oauth-token") {
		t.Errorf("migrating over an existing secret: %d %s %s", r.code, r.stdout, r.stderr)
	}

	// Key rotation: a new key as key_file, the old as previous_key_file, reseal; a
	// replica with the new key alone then reads every secret.
	newKey := filepath.Join(dir, "new.key")
	if _, stderr, code := egressd(t, dir, "secrets", "init", "--file", filepath.Join(dir, "scratch.enc"), "--key-file", newKey); code != 0 {
		t.Fatalf("making a key: %s", stderr)
	}
	rotating := strings.Replace(clusterYAML, "  key_file: "+s.keyFile+"\n", "  key_file: "+newKey+"\n  previous_key_file: "+s.keyFile+"\n", 1)
	rotDir := writeConfig(t, daemonConfig{extra: rotating})
	if r := execIn(t, dir, nil, "secrets", "reseal", "--config", filepath.Join(rotDir, "egressd.yaml")); r.code != 0 || !strings.Contains(r.stdout, "re-sealed 2 secret(s)") {
		t.Fatalf("secrets reseal: %d %s %s", r.code, r.stdout, r.stderr)
	}
	onlyNew := startDaemon(t, daemonConfig{extra: strings.Replace(clusterYAML, s.keyFile, newKey, 1)})
	code, v := runtimeCall(t, plain, "GET", "http://"+onlyNew.proxy+"/v1/secrets/db-password", "")
	if code != 200 || v["value"] != "db-pass" {
		t.Errorf("with the new key alone after reseal: %d %v", code, v["value"])
	}
}

// TestClusterMemberLoss: three egressd replicas on a three-member etcd cluster, a
// process a member. With
// one member stopped everything works; with two, writes fail with 503 while
// proxying and secret reads go on; with the members back, writes work again and no
// acknowledged write is lost.
func TestClusterMemberLoss(t *testing.T) {
	t.Parallel()
	etcd := startEtcdProcesses(t, 3)
	endpoints := strings.Join(etcd.Endpoints, ", ")
	dir := t.TempDir()
	s := provisionSecrets(t, dir, nil)
	secretsYAML := "secrets:\n  key_file: " + s.keyFile + "\n"
	origin := httpOrigin(t)
	target := origin.Listener.Addr().String()
	a, addA := clusterReplica(t, endpoints, secretsYAML)
	b, addB := clusterReplica(t, endpoints, secretsYAML)
	c, _ := clusterReplica(t, endpoints, secretsYAML)
	replicas := []*daemon{a, b, c}
	plain := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	secretURL := func(d *daemon) string { return "http://" + d.proxy + "/v1/secrets/token" }
	r := execInEnv(t, dir, []string{"EGRESSD_ADMIN_TOKEN=cluster-token"}, strings.NewReader("v1"), "secrets", "create", "token", "--admin", "http://"+a.admin)
	if r.code != 0 {
		t.Fatalf("secrets create: %d %s", r.code, r.stderr)
	}
	readsOn := func(d *daemon, want string) {
		t.Helper()
		for i := 0; ; i++ {
			code, v := runtimeCall(t, plain, "GET", secretURL(d), "")
			if code == 200 && v["value"] == want {
				return
			}
			if i == 200 {
				t.Fatalf("%s never read %q (last: %d %v)", d.proxy, want, code, v["version"])
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// One member down, the leader, killed: once the others have elected another,
	// everything works.
	first := etcd.leader(t)
	etcd.Members[first].Kill()
	var rest []string
	for i, ep := range etcd.Endpoints {
		if i != first {
			rest = append(rest, ep)
		}
	}
	waitForLeader(t, rest)
	if r := addA("add", target); r.code != 0 {
		t.Fatalf("allowlist add with one member down: %d %s", r.code, r.stderr)
	}
	if code, _ := runtimeCall(t, plain, "PUT", secretURL(b), `{"value":"v2"}`); code != 200 {
		t.Fatalf("secret update with one member down: %d", code)
	}
	for _, d := range replicas {
		d.waitStatus("http://"+target+"/", 200)
		readsOn(d, "v2")
	}

	// Two members down: no quorum. Writes 503; proxying and reads go on.
	second := (first + 1) % 3
	etcd.Members[second].Kill()
	// A write that reached a leader cut off from its quorum may be committed once
	// the quorum is back: it is not acknowledged, and the answer says it may apply.
	if r := addB("add", "during.example.com"); r.code == 0 || !strings.Contains(r.stderr, "503") || !strings.Contains(r.stderr, "may still be applied") {
		t.Errorf("allowlist add without a quorum: %d %s; want 503, saying it may still be applied", r.code, r.stderr)
	}
	if code, v := runtimeCall(t, plain, "PUT", secretURL(c), `{"value":"lost"}`); code != 503 {
		t.Errorf("secret update without a quorum: %d %v; want 503", code, v)
	}
	for _, d := range replicas {
		if got := d.status("http://" + target + "/"); got != 200 {
			t.Errorf("proxying on %s without a quorum: %d; want 200", d.proxy, got)
		}
		readsOn(d, "v2")
		d.waitLog("etcd is unreachable", 10*time.Second)
	}

	// The members back: writes work again, nothing acknowledged was lost.
	etcd.Members[first].Restart()
	etcd.Members[second].Restart()
	waitForLeader(t, etcd.Endpoints)
	for _, d := range replicas {
		d.waitLog("etcd is reachable again", 20*time.Second)
	}
	if code, _ := runtimeCall(t, plain, "PUT", secretURL(c), `{"value":"v3"}`); code != 200 {
		t.Fatalf("secret update after recovery: %d", code)
	}
	for _, d := range replicas {
		readsOn(d, "v3")
		if got := d.status("http://" + target + "/"); got != 200 {
			t.Errorf("the rule added with one member down, on %s after recovery: %d", d.proxy, got)
		}
	}
}

// TestClusterScheduler: three egressd replicas share one schedule on etcd. Each
// minute's run is invoked once whichever replica leads; kill -9 of the leader hands
// the lead to another within session_ttl + 1s, and the next run is still invoked
// once. It waits for real minute boundaries (up to about two minutes).
func TestClusterScheduler(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for real minute boundaries")
	}
	t.Parallel()
	etcd := startEtcdProcesses(t, 3)
	var mu sync.Mutex
	calls := map[string]int{}
	fn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls[r.Header.Get("X-Egressd-Scheduled-Time")]++
		mu.Unlock()
	}))
	defer fn.Close()
	runsAt := func(at string) int { mu.Lock(); defer mu.Unlock(); return calls[at] }
	dir := t.TempDir()
	functions := filepath.Join(dir, "functions.yaml")
	writeFile(t, functions, "functions:\n  - name: f\n    url: "+fn.URL+"/\n    state: productive\n")
	sched := fmt.Sprintf("scheduler:\n  functions_file: %s\n", functions)
	var replicas []*daemon
	var admins []func(args ...string) execResult
	for range 3 {
		d, _ := clusterReplica(t, strings.Join(etcd.Endpoints, ", "), sched)
		admins = append(admins, func(args ...string) execResult {
			return execInEnv(t, dir, []string{"EGRESSD_ADMIN_TOKEN=cluster-token"}, nil, append(append([]string{"schedules"}, args...), "--admin", "http://"+d.admin)...)
		})
		replicas = append(replicas, d)
	}
	leaderOf := func(ds []*daemon) *daemon {
		for i := 0; i < 500; i++ {
			for _, d := range ds {
				if d.logs.count("this replica leads the scheduler") > 0 && d.cmd.ProcessState == nil {
					return d
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatal("no replica leads the scheduler")
		return nil
	}
	first := leaderOf(replicas)
	if r := admins[1]("create", "--function", "f", "--cron", "* * * * *"); r.code != 0 {
		t.Fatalf("schedules create on B: %d %s", r.code, r.stderr)
	}
	for i, a := range admins {
		if r := a("list"); !strings.Contains(r.stdout, "* * * * *") {
			t.Errorf("schedules list on replica %d:\n%s", i, r.stdout)
		}
	}
	nextMinute := func() (string, time.Duration) {
		now := time.Now().UTC()
		next := now.Truncate(time.Minute).Add(time.Minute)
		return next.Format(time.RFC3339), next.Sub(now)
	}
	at, wait := nextMinute()
	time.Sleep(wait + 3*time.Second)
	if n := runsAt(at); n != 1 {
		t.Fatalf("the run at %s was invoked %d times; want once", at, n)
	}

	// kill -9 the leader; another leads within session_ttl + 1s.
	first.cmd.Process.Kill()
	<-first.done
	killed := time.Now()
	var live []*daemon
	for _, d := range replicas {
		if d != first {
			live = append(live, d)
		}
	}
	var second *daemon
	for second == nil && time.Since(killed) < 10*time.Second {
		for _, d := range live {
			if d.logs.count("this replica leads the scheduler") > 0 {
				second = d
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if second == nil {
		t.Fatal("no replica took over the scheduler within 10s of kill -9")
	}
	failover := time.Since(killed)
	t.Logf("scheduler failover after kill -9 of the leader: %s (session_ttl 2s)", failover.Round(time.Millisecond))
	if failover > 3*time.Second {
		t.Errorf("failover took %s; want within session_ttl + 1s", failover)
	}
	at, wait = nextMinute()
	time.Sleep(wait + 3*time.Second)
	if n := runsAt(at); n != 1 {
		t.Errorf("the run at %s, after the failover, was invoked %d times; want once", at, n)
	}
	mu.Lock()
	defer mu.Unlock()
	for slot, n := range calls {
		if n != 1 {
			t.Errorf("the run at %s was invoked %d times", slot, n)
		}
	}
}
