package e2e

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/dnstest"
)

// redirectOrigin is one HTTP server on 127.0.0.1 that plays several hosts, told
// apart by the Host header, with redirect chains across them.
func redirectOrigin(t *testing.T) (port string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ = net.SplitHostPort(ln.Addr().String())
	routes := map[string]func(w http.ResponseWriter, r *http.Request){
		"a.test/start": func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://b.test:"+port+"/next", http.StatusMovedPermanently) // absolute
		},
		"b.test/next": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Location", "/final")
			w.WriteHeader(http.StatusFound)
		}, // relative
		"b.test/final": func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://c.test:"+port+"/done", http.StatusTemporaryRedirect)
		},
		"c.test/done": func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "done") },
		"loopy.test/x": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Location", "/y")
			w.WriteHeader(http.StatusFound)
		},
		"loopy.test/y": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Location", "/x")
			w.WriteHeader(http.StatusFound)
		},
		"nohead.test/": func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodHead {
				w.WriteHeader(http.StatusMethodNotAllowed)
				return
			}
			io.WriteString(w, "got "+r.Method)
		},
		"a.test/to-private": func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://private.test:"+port+"/", http.StatusFound)
		},
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.Host)
		if h := routes[host+r.URL.Path]; h != nil {
			h(w, r)
			return
		}
		http.NotFound(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return port
}

var traceZone = map[string]dnstest.Record{
	"a.test":       {A: []string{"127.0.0.1"}, TTL: 60},
	"b.test":       {A: []string{"127.0.0.1"}, TTL: 60},
	"c.test":       {A: []string{"127.0.0.1"}, TTL: 60},
	"loopy.test":   {A: []string{"127.0.0.1"}, TTL: 60},
	"nohead.test":  {A: []string{"127.0.0.1"}, TTL: 60},
	"private.test": {A: []string{"127.0.0.2"}, TTL: 60}, // not exempt from the guard
}

func traceAllowlist(port string, withB bool) string {
	rules := []string{"a.test:" + port, "c.test:" + port, "loopy.test:" + port, "nohead.test:" + port, "private.test:" + port, "127.0.0.1/32"}
	if withB {
		rules = append(rules, "b.test:"+port)
	}
	return strings.Join(rules, "\n") + "\n"
}

type traceJSON struct {
	Hops []struct {
		URL, Method, Target, Rule, Reason, Hint, Location, Error string
		RuleAt                                                   string `json:"rule_at"`
		Allowed                                                  bool
		Status                                                   int
	}
	End     string
	Allowed bool
	Add     []string
}

func TestTrace(t *testing.T) {
	t.Parallel()
	port := redirectOrigin(t)
	dir := writeConfig(t, daemonConfig{zone: traceZone, files: map[string]string{"allow.d/a.txt": traceAllowlist(port, false)}})
	fixedDir := writeConfig(t, daemonConfig{zone: traceZone, files: map[string]string{"allow.d/a.txt": traceAllowlist(port, true)}})
	trace := func(t *testing.T, dir string, args ...string) (traceJSON, string, int) {
		t.Helper()
		stdout, stderr, code := egressd(t, dir, append([]string{"trace", "--config", "egressd.yaml", "--json"}, args...)...)
		var tr traceJSON
		if code != 2 {
			if err := json.Unmarshal([]byte(stdout), &tr); err != nil {
				t.Fatalf("trace output %q (stderr %q): %v", stdout, stderr, err)
			}
		}
		return tr, stderr, code
	}
	p := ":" + port

	t.Run("stops at a denied host", func(t *testing.T) {
		tr, _, code := trace(t, dir, "http://a.test"+p+"/start")
		if len(tr.Hops) != 2 || tr.Hops[1].URL != "http://b.test"+p+"/next" || tr.Hops[1].Allowed || tr.Hops[1].Status != 0 || tr.Hops[1].Method != "" {
			t.Fatalf("hops = %+v; want a.test fetched, then b.test denied and not fetched", tr.Hops)
		}
		if h := tr.Hops[1]; !strings.Contains(h.Error, "not fetched") || !strings.Contains(h.Error, "--follow-denied") {
			t.Errorf("the denied hop says %q; want why it was not fetched and how to look further", h.Error)
		}
		if tr.End != "denied" || tr.Allowed || len(tr.Add) != 1 || tr.Add[0] != "b.test"+p || code != 1 {
			t.Errorf("trace end %q allowed %v add %v exit %d; want denied, false, [b.test%s], 1", tr.End, tr.Allowed, tr.Add, code, p)
		}
		stdout, _, _ := egressd(t, dir, "trace", "--config", "egressd.yaml", "http://a.test"+p+"/start")
		if !strings.Contains(stdout, "stopped at a denied hop") {
			t.Errorf("text output:\n%s", stdout)
		}
	})
	t.Run("chain with a denied host, followed", func(t *testing.T) {
		tr, _, code := trace(t, dir, "--follow-denied", "http://a.test"+p+"/start")
		want := []struct {
			url     string
			status  int
			allowed bool
		}{
			{"http://a.test" + p + "/start", 301, true},
			{"http://b.test" + p + "/next", 302, false},
			{"http://b.test" + p + "/final", 307, false},
			{"http://c.test" + p + "/done", 200, true},
		}
		if len(tr.Hops) != len(want) {
			t.Fatalf("hops = %+v; want %d", tr.Hops, len(want))
		}
		for i, w := range want {
			h := tr.Hops[i]
			if h.URL != w.url || h.Status != w.status || h.Allowed != w.allowed || h.Method != "HEAD" {
				t.Errorf("hop %d = %s %s %d allowed=%v; want HEAD %s %d allowed=%v", i+1, h.Method, h.URL, h.Status, h.Allowed, w.url, w.status, w.allowed)
			}
		}
		if h := tr.Hops[0]; h.Rule != "a.test"+p || !strings.HasSuffix(h.RuleAt, "allow.d/a.txt:1") {
			t.Errorf("hop 1 rule = %q at %q; want a.test%s at allow.d/a.txt:1", h.Rule, h.RuleAt, p)
		}
		if h := tr.Hops[1]; h.Reason != "not on the allowlist" || h.Hint != "add b.test"+p+" to an allowlist file" {
			t.Errorf("hop 2 = %q %q", h.Reason, h.Hint)
		}
		if tr.End != "answer" || tr.Allowed || len(tr.Add) != 1 || tr.Add[0] != "b.test"+p || code != 1 {
			t.Errorf("trace end %q allowed %v add %v exit %d; want answer, false, [b.test%s], 1", tr.End, tr.Allowed, tr.Add, code, p)
		}
	})
	t.Run("the whole chain allowed", func(t *testing.T) {
		tr, _, code := trace(t, fixedDir, "http://a.test"+p+"/start")
		if !tr.Allowed || len(tr.Add) != 0 || code != 0 {
			t.Errorf("allowed %v add %v exit %d; want true, [], 0", tr.Allowed, tr.Add, code)
		}
		stdout, _, _ := egressd(t, fixedDir, "trace", "--config", "egressd.yaml", "http://a.test"+p+"/start")
		if !strings.Contains(stdout, "the whole chain is already allowed") || !strings.Contains(stdout, "redirects to http://b.test"+p+"/next") {
			t.Errorf("text output:\n%s", stdout)
		}
	})
	t.Run("loop", func(t *testing.T) {
		tr, _, code := trace(t, fixedDir, "http://loopy.test"+p+"/x")
		if tr.End != "loop" || len(tr.Hops) != 2 || code != 1 {
			t.Errorf("end %q after %d hops, exit %d; want loop after 2, exit 1", tr.End, len(tr.Hops), code)
		}
	})
	t.Run("hop limit", func(t *testing.T) {
		tr, _, code := trace(t, fixedDir, "--max-hops", "2", "http://a.test"+p+"/start")
		if tr.End != "too many hops" || len(tr.Hops) != 2 || code != 1 {
			t.Errorf("end %q after %d hops, exit %d; want too many hops after 2, exit 1", tr.End, len(tr.Hops), code)
		}
	})
	t.Run("GET where HEAD is refused", func(t *testing.T) {
		tr, _, code := trace(t, fixedDir, "http://nohead.test"+p+"/")
		if len(tr.Hops) != 1 || tr.Hops[0].Method != "GET" || tr.Hops[0].Status != 200 || code != 0 {
			t.Errorf("hops %+v exit %d; want one GET 200, exit 0", tr.Hops, code)
		}
	})
	t.Run("a hop into a guarded range is reported, not fetched", func(t *testing.T) {
		tr, _, code := trace(t, fixedDir, "http://a.test"+p+"/to-private")
		if len(tr.Hops) != 2 || code != 1 {
			t.Fatalf("hops %+v exit %d; want 2 hops, exit 1", tr.Hops, code)
		}
		h := tr.Hops[1]
		if h.Allowed || h.Reason != "private address" || h.Status != 0 || !strings.Contains(h.Error, "not fetched: private.test resolves to 127.0.0.2, a loopback address") {
			t.Errorf("hop 2 = %+v", h)
		}
		if len(tr.Add) != 1 || tr.Add[0] != "127.0.0.2/32" {
			t.Errorf("add = %v; want [127.0.0.2/32]", tr.Add)
		}
	})
	t.Run("usage", func(t *testing.T) {
		for _, args := range [][]string{{"trace", "--config", "egressd.yaml"}, {"trace", "--config", "egressd.yaml", "ftp://a.test/"}} {
			if _, stderr, code := egressd(t, fixedDir, args...); code != 2 || stderr == "" {
				t.Errorf("egressd %v = exit %d, %q; want 2 and a message", args, code, stderr)
			}
		}
	})
}

func TestAdminAPI(t *testing.T) {
	t.Parallel()
	port := redirectOrigin(t)
	d := startDaemon(t, daemonConfig{
		zone:  traceZone,
		extra: "admin:\n  listen: 127.0.0.1:0\n  token_file: admin.token\n  denial_targets: 3\n",
		files: map[string]string{"allow.d/a.txt": traceAllowlist(port, false), "admin.token": "tok-" + t.Name() + "\n"},
	})
	if d.admin == "" {
		t.Fatal("egressd did not log its admin address")
	}
	base := "http://" + d.admin
	token := "tok-" + t.Name()

	t.Run("auth", func(t *testing.T) {
		for _, tt := range []struct {
			auth []string
			want string
		}{
			{nil, "401"},
			{[]string{"-H", "Authorization: Bearer wrong"}, "401"},
			{[]string{"-H", "Authorization: Bearer " + token[:len(token)-1]}, "401"},
			{[]string{"-H", "Authorization: Bearer " + token + "x"}, "401"},
			{[]string{"-H", "Authorization: " + token}, "401"},
			{[]string{"-H", "Authorization: Bearer " + token}, "200"},
			{[]string{"-H", "Authorization: bearer " + token}, "200"},
		} {
			out, _ := curl(t, nil, append(tt.auth, "-o", "/dev/null", "-w", "%{http_code}", base+"/v1/policy")...)
			if out != tt.want {
				t.Errorf("GET /v1/policy with %v = %s; want %s", tt.auth, out, tt.want)
			}
		}
	})
	t.Run("not reachable through the proxy", func(t *testing.T) {
		out, _ := curl(t, nil, "-x", d.proxyURL(), "-H", "Authorization: Bearer "+token, "-o", "/dev/null", "-w", "%{http_code}", base+"/v1/policy")
		if out != "403" {
			t.Errorf("admin API through the proxy = %s; want 403", out)
		}
	})
	t.Run("denials", func(t *testing.T) {
		for _, h := range []string{"one", "two", "three", "four", "five", "four"} {
			d.status("http://" + h + ".invalid/")
		}
		tokenFile := filepath.Join(d.dir, "admin.token")
		stdout, stderr, code := egressd(t, d.dir, "denials", "--admin", base, "--token-file", tokenFile, "--json")
		var resp struct {
			Denials []struct {
				Target     string
				LastReason string `json:"last_reason"`
				LastHint   string `json:"last_hint"`
				LastClient string `json:"last_client"`
				Count      int
			}
		}
		if code != 0 || json.Unmarshal([]byte(stdout), &resp) != nil {
			t.Fatalf("denials = exit %d, %q, %q", code, stdout, stderr)
		}
		var targets []string
		for _, x := range resp.Denials {
			targets = append(targets, x.Target)
		}
		// Bounded to 3 targets, the most recent first; four was denied twice.
		if strings.Join(targets, " ") != "four.invalid:80 five.invalid:80 three.invalid:80" {
			t.Errorf("denial targets = %v; want [four five three]", targets)
		}
		if x := resp.Denials[0]; x.Count != 2 || x.LastReason != "not on the allowlist" || x.LastClient != "127.0.0.1" ||
			x.LastHint != "add four.invalid to an allowlist file" {
			t.Errorf("first denial = %+v", x)
		}
		// The token from the environment, and the table.
		cmd := []string{"denials", "--admin", base, "--limit", "1"}
		stdout, _, code = egressdEnv(t, d.dir, []string{"EGRESSD_ADMIN_TOKEN=" + token}, cmd...)
		if code != 0 || !strings.Contains(stdout, "four.invalid:80") || strings.Contains(stdout, "five.invalid") {
			t.Errorf("denials --limit 1 = exit %d:\n%s", code, stdout)
		}
		if _, stderr, code := egressdEnv(t, d.dir, []string{"EGRESSD_ADMIN_TOKEN=nope"}, cmd...); code != 1 || !strings.Contains(stderr, "401") {
			t.Errorf("denials with a wrong token = exit %d, %q; want 1 and 401", code, stderr)
		}
	})
	t.Run("policy", func(t *testing.T) {
		var pol struct {
			Rules []struct {
				Rule, File string
				Line       int
			}
			LastReload struct {
				OK     bool
				Errors []string
			} `json:"last_reload"`
		}
		get := func() {
			out, _ := curl(t, nil, "-H", "Authorization: Bearer "+token, base+"/v1/policy")
			if err := json.Unmarshal([]byte(out), &pol); err != nil {
				t.Fatalf("policy %q: %v", out, err)
			}
		}
		get()
		if len(pol.Rules) != 6 || pol.Rules[0].Rule != "a.test:"+port || pol.Rules[0].Line != 1 || !pol.LastReload.OK {
			t.Errorf("policy = %+v", pol)
		}
		writeFile(t, d.path("allow.d/a.txt"), "*.*.bad\n")
		deadline := time.Now().Add(3 * time.Second)
		for get(); pol.LastReload.OK && time.Now().Before(deadline); get() {
			time.Sleep(20 * time.Millisecond)
		}
		if pol.LastReload.OK || len(pol.LastReload.Errors) != 1 || !strings.Contains(pol.LastReload.Errors[0], "only one wildcard is allowed") || len(pol.Rules) != 6 {
			t.Errorf("after a broken edit: %+v; want the failed reload's error and the 6 rules still in force", pol)
		}
	})
	t.Run("trace by the daemon", func(t *testing.T) {
		stdout, stderr, code := egressdEnv(t, d.dir, []string{"EGRESSD_ADMIN_TOKEN=" + token}, "trace", "--admin", base, "http://loopy.test:"+port+"/x")
		if code != 1 || !strings.Contains(stdout, "end: the chain loops") {
			t.Errorf("trace --admin = exit %d:\n%s%s", code, stdout, stderr)
		}
	})
}

func TestAdminOffWithoutToken(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, daemonConfig{})
	if line := d.logs.find(`"msg":"egressd started"`); !strings.Contains(line, `"admin":""`) {
		t.Errorf("admin listener started without a token file: %s", line)
	}
}
