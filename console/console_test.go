package console

import (
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/egressd/egressd/admin"
)

const token = "console-test-token"

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newServer is the console on a real admin.Handler (bearer-checked), whose
// POST /v1/allowlist records what reached it.
func newServer(t *testing.T) (*httptest.Server, *clock, *[]string) {
	t.Helper()
	api, err := admin.New(token)
	if err != nil {
		t.Fatal(err)
	}
	var posted []string
	api.Handle("GET /v1/policy", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		admin.WriteJSON(w, 200, map[string]any{"rules": []map[string]any{{"rule": "a.example.com", "file": "a.txt", "line": 1}},
			"last_reload": map[string]any{"time": "2026-11-29T12:00:00Z", "ok": false, "errors": []string{"b.txt:3: bad rule"}}})
	}))
	api.Handle("POST /v1/allowlist", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		posted = append(posted, r.Header.Get("Cookie"))
		admin.WriteJSON(w, 201, map[string]string{"rule": "x"})
	}))
	clk := &clock{t: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}
	c, err := New(Options{Token: token, API: api, Now: clk.now, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)
	return srv, clk, &posted
}

func client(t *testing.T) *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func signIn(t *testing.T, srv *httptest.Server, c *http.Client, tok string) *http.Response {
	t.Helper()
	resp, err := c.PostForm(srv.URL+"/signin", url.Values{"token": {tok}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func body(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return b.String()
}

func TestSignInAndHeaders(t *testing.T) {
	srv, _, _ := newServer(t)
	c := client(t)
	resp, err := c.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	page := body(t, resp)
	for k, want := range map[string]string{
		"Content-Security-Policy": "default-src 'self'", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
	} {
		if got := resp.Header.Get(k); !strings.Contains(got, want) {
			t.Errorf("%s = %q; want %q", k, got, want)
		}
	}
	if !strings.Contains(page, `name="token"`) || strings.Contains(page, "<script>") {
		t.Errorf("sign-in page:\n%s", page)
	}

	if resp := signIn(t, srv, c, "wrong"); resp.StatusCode != 401 || len(resp.Cookies()) != 0 {
		t.Errorf("a wrong token: %d, cookies %v; want 401 and none", resp.StatusCode, resp.Cookies())
	}
	resp = signIn(t, srv, c, token)
	if resp.StatusCode != 303 || resp.Header.Get("Location") != "/overview" {
		t.Fatalf("sign-in: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	ck := resp.Cookies()[0]
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.MaxAge != 8*3600 || ck.Secure {
		t.Errorf("cookie %+v; want HttpOnly, SameSite=Strict, 8h, not Secure without TLS", ck)
	}
	resp, _ = c.Get(srv.URL + "/overview")
	page = body(t, resp)
	if resp.StatusCode != 200 || !strings.Contains(page, "1 rules from 1 sources") || !strings.Contains(page, "b.txt:3: bad rule") {
		t.Errorf("overview: %d\n%s", resp.StatusCode, page)
	}
	if strings.Contains(page, token) {
		t.Error("the admin token is in a page")
	}
}

func TestCSRFAndAPI(t *testing.T) {
	srv, _, posted := newServer(t)
	c := client(t)
	if resp, _ := c.Post(srv.URL+"/console/api/v1/allowlist", "application/json", strings.NewReader(`{"rule":"x"}`)); resp.StatusCode != 401 {
		t.Errorf("API without a session: %d; want 401", resp.StatusCode)
	}
	signIn(t, srv, c, token)
	if resp, _ := c.Post(srv.URL+"/console/api/v1/allowlist", "application/json", strings.NewReader(`{"rule":"x"}`)); resp.StatusCode != 403 {
		t.Errorf("a change without the CSRF token: %d; want 403", resp.StatusCode)
	}
	resp, _ := c.Get(srv.URL + "/overview")
	page := body(t, resp)
	i := strings.Index(page, `name="csrf" value="`)
	if i < 0 {
		t.Fatal("no CSRF token in the page")
	}
	csrf := page[i+len(`name="csrf" value="`):]
	csrf = csrf[:strings.Index(csrf, `"`)]
	req, _ := http.NewRequest("POST", srv.URL+"/console/api/v1/allowlist", strings.NewReader(`{"rule":"x"}`))
	req.Header.Set("X-CSRF-Token", csrf+"x")
	if resp, _ := c.Do(req); resp.StatusCode != 403 {
		t.Errorf("a wrong CSRF token: %d; want 403", resp.StatusCode)
	}
	req, _ = http.NewRequest("POST", srv.URL+"/console/api/v1/allowlist", strings.NewReader(`{"rule":"x"}`))
	req.Header.Set("X-CSRF-Token", csrf)
	if resp, _ := c.Do(req); resp.StatusCode != 201 {
		t.Errorf("a change with the CSRF token: %d; want 201 from the API", resp.StatusCode)
	}
	if len(*posted) != 1 || (*posted)[0] != "" {
		t.Errorf("the API saw %q; want one request, without the session cookie", *posted)
	}
	// Sign-out needs the token too, and ends the session.
	if resp, _ := c.PostForm(srv.URL+"/signout", nil); resp.StatusCode != 403 {
		t.Errorf("sign-out without the CSRF token: %d; want 403", resp.StatusCode)
	}
	if resp, _ := c.PostForm(srv.URL+"/signout", url.Values{"csrf": {csrf}}); resp.StatusCode != 303 {
		t.Errorf("sign-out: %d", resp.StatusCode)
	}
	if resp, _ := c.Get(srv.URL + "/overview"); resp.StatusCode != 303 {
		t.Errorf("overview after sign-out: %d; want back to sign-in", resp.StatusCode)
	}
}

func TestSessionExpiry(t *testing.T) {
	srv, clk, _ := newServer(t)
	c := client(t)
	signIn(t, srv, c, token)
	clk.add(8*time.Hour - time.Second)
	if resp, _ := c.Get(srv.URL + "/overview"); resp.StatusCode != 200 {
		t.Errorf("just before expiry: %d", resp.StatusCode)
	}
	clk.add(time.Second)
	resp, _ := c.Get(srv.URL + "/overview")
	if resp.StatusCode != 303 || resp.Header.Get("Location") != "/?expired=1" {
		t.Errorf("at expiry: %d to %q; want sign-in", resp.StatusCode, resp.Header.Get("Location"))
	}
}

func TestCountsLastHour(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	var c counts
	// Started at t0 with nothing; 10 requests a minute, 2 denied.
	for m := 0; m <= 90; m++ {
		c.add(sample{t0.Add(time.Duration(m) * time.Minute), int64(8 * m), int64(2 * m)})
	}
	now := sample{t0.Add(90*time.Minute + 30*time.Second), 8*90 + 4, 2*90 + 1}
	a, d := c.lastHour(now)
	// The oldest sample within the hour is at minute 31: 59.5 minutes ago.
	if a != 8*90+4-8*31 || d != 2*90+1-2*31 {
		t.Errorf("last hour at 90.5 min: %d allowed, %d denied; want %d, %d", a, d, 8*90+4-8*31, 2*90+1-2*31)
	}
	if len(c.samples) > 62 {
		t.Errorf("%d samples kept; want about an hour's", len(c.samples))
	}
	var fresh counts
	fresh.add(sample{t0, 0, 0})
	if a, d := fresh.lastHour(sample{t0.Add(5 * time.Minute), 7, 3}); a != 7 || d != 3 {
		t.Errorf("5 minutes after start: %d, %d; want everything since start", a, d)
	}
}
