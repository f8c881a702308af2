package e2e

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testca"
)

// TestConsoleAccess: the admin listener serves the console beside the JSON API;
// sign-in with the admin token; the API still wants its bearer token; with
// admin.tls_cert_file the listener speaks TLS and the cookie is Secure.
func TestConsoleAccess(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := testca.New(t, "admin-ca")
	cert, key := ca.Issue(t, "127.0.0.1", time.Now().Add(time.Hour), false)
	writeFile(t, filepath.Join(dir, "admin.token"), "console-token\n")
	writeFile(t, filepath.Join(dir, "admin.crt"), cert)
	writeFile(t, filepath.Join(dir, "admin.key"), key)
	for _, tlsOn := range []bool{false, true} {
		extra := fmt.Sprintf("admin:\n  listen: 127.0.0.1:0\n  token_file: %s\n", filepath.Join(dir, "admin.token"))
		scheme := "http"
		if tlsOn {
			extra += fmt.Sprintf("  tls_cert_file: %s\n  tls_key_file: %s\n", filepath.Join(dir, "admin.crt"), filepath.Join(dir, "admin.key"))
			scheme = "https"
		}
		d := startDaemon(t, daemonConfig{files: map[string]string{"allow.d/a.txt": "a.example.com\n"}, extra: extra})
		base := scheme + "://" + d.admin
		jar, _ := cookiejar.New(nil)
		c := &http.Client{Jar: jar, Timeout: 5 * time.Second,
			Transport: &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
		get := func(path string) (int, string) {
			resp, err := c.Get(base + path)
			if err != nil {
				t.Fatalf("GET %s: %v", path, err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		if code, page := get("/"); code != 200 || !strings.Contains(page, "Admin token") {
			t.Fatalf("%s: the sign-in page: %d\n%s", scheme, code, page)
		}
		if code, _ := get("/v1/policy"); code != 401 {
			t.Errorf("%s: the JSON API without its bearer token: %d; want 401", scheme, code)
		}
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		resp, err := c.PostForm(base+"/signin", url.Values{"token": {"console-token"}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if set := resp.Header.Get("Set-Cookie"); strings.Contains(set, "Secure") != tlsOn || !strings.Contains(set, "HttpOnly") {
			t.Errorf("%s: Set-Cookie %q; want HttpOnly, and Secure exactly on TLS", scheme, set)
		}
		c.CheckRedirect = nil
		d.status("http://denied.invalid/")
		if code, page := get("/overview"); code != 200 || !strings.Contains(page, "1 rules from 1 sources") ||
			!strings.Contains(page, "<dd>enforce</dd>") || !strings.Contains(page, "0 allowed, 1 denied") || !strings.Contains(page, "Tunnels open</dt><dd>0") {
			t.Errorf("%s: overview: %d\n%s", scheme, code, page)
		}
		if code, _ := get("/console/api/v1/policy"); code != 200 {
			t.Errorf("%s: the API through the console's session: %d", scheme, code)
		}
	}
}

// consoleSession signs in to d's console and returns a client and the page's CSRF
// token.
func consoleSession(t *testing.T, d *daemon, token string) (*http.Client, string, string) {
	t.Helper()
	base := "http://" + d.admin
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := c.PostForm(base+"/signin", url.Values{"token": {token}})
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	_, rest, ok := strings.Cut(string(page), `name="csrf" value="`)
	if !ok {
		t.Fatalf("no CSRF token after sign-in:\n%s", page)
	}
	csrf, _, _ := strings.Cut(rest, `"`)
	return c, base, csrf
}

// managedDaemon is an egressd with the admin API (token "console-token"), a file
// rule and managed rules, and an origin it denies until told otherwise.
func managedDaemon(t *testing.T) (*daemon, string) {
	t.Helper()
	origin := httpOrigin(t)
	target := origin.Listener.Addr().String()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "admin.token"), "console-token\n")
	d := startDaemon(t, daemonConfig{
		files: map[string]string{"allow.d/a.txt": "file-rule.example.com\n"},
		extra: fmt.Sprintf("admin:\n  listen: 127.0.0.1:0\n  token_file: %s\nmanaged_allowlist:\n  file: %s\n",
			filepath.Join(dir, "admin.token"), filepath.Join(dir, "managed.txt")),
	})
	return d, target
}

// TestConsoleAllowlist: a domain added on the page is in force through the proxy
// when the page comes back; a plain domain gets the subdomain pitfall and the
// offer of its wildcard; a bad rule gets the rule files' message; a managed rule
// is removed from the page; a form without the CSRF token changes nothing.
func TestConsoleAllowlist(t *testing.T) {
	t.Parallel()
	d, target := managedDaemon(t)
	c, base, csrf := consoleSession(t, d, "console-token")
	post := func(path string, form url.Values) string {
		t.Helper()
		resp, err := c.PostForm(base+path, form)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if got := d.status("http://" + target + "/"); got != 403 {
		t.Fatalf("before: %d", got)
	}
	if page := post("/allowlist/add", url.Values{"rule": {target}, "csrf": {csrf}}); !strings.Contains(page, target+" added; in force after") || strings.Contains(page, "different hosts") {
		t.Fatalf("add on the page (an address: no subdomain pitfall):\n%s", page)
	}
	if got := d.status("http://" + target + "/"); got != 200 {
		t.Errorf("through the proxy after the page came back: %d; want 200", got)
	}
	page := post("/allowlist/add", url.Values{"rule": {"partner.example.org"}, "csrf": {csrf}})
	if !strings.Contains(page, "www.partner.example.org</code> and every other subdomain are different hosts") || !strings.Contains(page, `value="*.partner.example.org"`) {
		t.Errorf("the pitfall of a plain domain:\n%s", page)
	}
	if page := post("/allowlist/add", url.Values{"rule": {"*.*.example.com"}, "csrf": {csrf}}); !strings.Contains(page, "only one wildcard is allowed, as the leftmost label") {
		t.Errorf("a bad rule:\n%s", page)
	}
	if page := post("/allowlist/remove", url.Values{"rule": {"file-rule.example.com"}, "csrf": {csrf}}); !strings.Contains(page, "file rules belong to their file") {
		t.Errorf("removing a file rule:\n%s", page)
	}
	// Without the CSRF token: refused, nothing removed.
	if page := post("/allowlist/remove", url.Values{"rule": {target}}); !strings.Contains(page, "CSRF") {
		t.Errorf("a form without the CSRF token:\n%s", page)
	}
	if got := d.status("http://" + target + "/"); got != 200 {
		t.Errorf("after a refused removal: %d; want still 200", got)
	}
	if page := post("/allowlist/remove", url.Values{"rule": {target}, "csrf": {csrf}}); !strings.Contains(page, target+" removed.") {
		t.Errorf("remove on the page:\n%s", page)
	}
	if got := d.status("http://" + target + "/"); got != 403 {
		t.Errorf("after the removal: %d; want 403", got)
	}
}

// TestConsoleSecrets: keys, never values; create with the value in a password
// field, then the value is in no answer to the browser; default secrets hidden
// unless asked for; delete after a confirmation naming the key.
func TestConsoleSecrets(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "defaults.yaml"), "seeded-default: default-value-77\n")
	s := secretsSetup{dir: dir, file: filepath.Join(dir, "secrets.enc"), keyFile: filepath.Join(dir, "secrets.key"), token: "console-admin-token"}
	if _, stderr, code := egressd(t, dir, "secrets", "init", "--file", s.file, "--key-file", s.keyFile, "--defaults", filepath.Join(dir, "defaults.yaml")); code != 0 {
		t.Fatalf("secrets init: %s", stderr)
	}
	writeFile(t, filepath.Join(dir, "admin.token"), s.token+"\n")
	d := startDaemon(t, daemonConfig{extra: secretsConfig(s, "")})
	c, base, csrf := consoleSession(t, d, s.token)
	var answers strings.Builder
	do := func(method, path string, form url.Values) string {
		t.Helper()
		var resp *http.Response
		var err error
		if method == "GET" {
			resp, err = c.Get(base + path)
		} else {
			resp, err = c.PostForm(base+path, form)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		answers.WriteString(resp.Request.URL.String() + "\n" + string(b))
		return string(b)
	}
	if page := do("GET", "/secrets", nil); strings.Contains(page, "seeded-default") {
		t.Errorf("a default secret listed without asking:\n%s", page)
	}
	if page := do("GET", "/secrets?all=true", nil); !strings.Contains(page, "<code>seeded-default</code> <small>(default)</small>") {
		t.Errorf("default secrets asked for:\n%s", page)
	}
	const value = "sk-live-secret-value-4711"
	page := do("POST", "/secrets/create", url.Values{"key": {"stripe-key"}, "value": {value}, "csrf": {csrf}})
	if !strings.Contains(page, "stripe-key created (version 1)") || !strings.Contains(page, "<code>stripe-key</code>") {
		t.Errorf("after create:\n%s", page)
	}
	if page := do("POST", "/secrets/create", url.Values{"key": {"stripe-key"}, "value": {"x"}, "csrf": {csrf}}); !strings.Contains(page, "exists") {
		t.Errorf("creating it again:\n%s", page)
	}
	page = do("POST", "/secrets/delete", url.Values{"key": {"stripe-key"}, "csrf": {csrf}})
	if !strings.Contains(page, "Delete the secret stripe-key? Functions reading it get 404 at once") {
		t.Errorf("the confirmation:\n%s", page)
	}
	plain := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	if code, _ := runtimeCall(t, plain, "GET", "http://"+d.proxy+"/v1/secrets/stripe-key", ""); code != 200 {
		t.Errorf("before the confirmation the secret is still there: %d", code)
	}
	if page := do("POST", "/secrets/delete", url.Values{"key": {"stripe-key"}, "csrf": {csrf}, "confirm": {"yes"}}); !strings.Contains(page, "stripe-key deleted.") {
		t.Errorf("after delete:\n%s", page)
	}
	if code, _ := runtimeCall(t, plain, "GET", "http://"+d.proxy+"/v1/secrets/stripe-key", ""); code != 404 {
		t.Errorf("a function reading it after the delete: %d; want 404", code)
	}
	if strings.Contains(answers.String(), value) || strings.Contains(answers.String(), "default-value-77") {
		t.Error("the secret's value came back to the browser")
	}
	if strings.Contains(d.logs.String(), value) {
		t.Error("the secret's value is in the log")
	}
}

// TestConsoleDenials: a denied target is on the Denials page with an "allow"
// button for its rule; after the confirmation the target is allowed through the
// proxy; the filter narrows the list.
func TestConsoleDenials(t *testing.T) {
	t.Parallel()
	d, target := managedDaemon(t)
	if got := d.status("http://" + target + "/"); got != 403 {
		t.Fatalf("before: %d", got)
	}
	d.status("http://other.invalid/")
	c, base, csrf := consoleSession(t, d, "console-token")
	get := func(path string) string {
		resp, err := c.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	page := get("/denials")
	if !strings.Contains(page, "<code>"+target+"</code>") || !strings.Contains(page, "Allow "+target) || !strings.Contains(page, "other.invalid") {
		t.Fatalf("the Denials page:\n%s", page)
	}
	if page := get("/denials?q=other"); strings.Contains(page, "<code>"+target+"</code>") || !strings.Contains(page, "other.invalid") {
		t.Errorf("filtered by other:\n%s", page)
	}
	resp, err := c.PostForm(base+"/denials/allow", url.Values{"rule": {target}, "csrf": {csrf}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "Add "+target+" to the allowlist?") {
		t.Errorf("the confirmation:\n%s", b)
	}
	if got := d.status("http://" + target + "/"); got != 403 {
		t.Errorf("before the confirmation: %d; want still 403", got)
	}
	resp, err = c.PostForm(base+"/denials/allow", url.Values{"rule": {target}, "csrf": {csrf}, "confirm": {"yes"}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), target+" allowed.") {
		t.Errorf("after allowing:\n%s", b)
	}
	if got := d.status("http://" + target + "/"); got != 200 {
		t.Errorf("through the proxy after allowing: %d; want 200", got)
	}
}

// TestConsoleTrace: the Trace page shows a chain stopped at a denied hop and the
// rule it needs; "add these rules" adds it through the API, and the chain then
// goes through that hop.
func TestConsoleTrace(t *testing.T) {
	t.Parallel()
	port := redirectOrigin(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "admin.token"), "console-token\n")
	d := startDaemon(t, daemonConfig{zone: traceZone, files: map[string]string{"allow.d/a.txt": traceAllowlist(port, false)},
		extra: fmt.Sprintf("admin:\n  listen: 127.0.0.1:0\n  token_file: %s\nmanaged_allowlist:\n  file: %s\n",
			filepath.Join(dir, "admin.token"), filepath.Join(dir, "managed.txt"))})
	c, base, csrf := consoleSession(t, d, "console-token")
	start := "http://a.test:" + port + "/start"
	resp, err := c.Get(base + "/allowlist")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(page), `<form method="get" action="/trace"`) || !strings.Contains(string(page), "Check redirects") {
		t.Errorf("the allowlist page has no redirect check:\n%s", page)
	}
	resp, err = c.Get(base + "/trace?url=" + url.QueryEscape(start))
	if err != nil {
		t.Fatal(err)
	}
	page, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(page), "denied: not on the allowlist") || !strings.Contains(string(page), `name="rule" value="b.test:`+port+`"`) {
		t.Fatalf("the trace of a chain with a denied hop:\n%s", page)
	}
	resp, err = c.PostForm(base+"/trace/add", url.Values{"csrf": {csrf}, "url": {start}, "rule": {"b.test:" + port}})
	if err != nil {
		t.Fatal(err)
	}
	page, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(page), "Added b.test:"+port) || !strings.Contains(string(page), "allowed by <code>b.test:"+port+"</code> (managed:b.test:"+port+")") {
		t.Errorf("after adding the chain's rule:\n%s", page)
	}
}
