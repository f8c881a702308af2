package e2e

import (
	"crypto/tls"
	"encoding/json"
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
		var started struct{ Admin string }
		json.Unmarshal([]byte(d.logs.find(`"msg":"egressd started"`)), &started)
		base := scheme + "://" + started.Admin
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
		if code, page := get("/overview"); code != 200 || !strings.Contains(page, "1 rules from 1 sources") {
			t.Errorf("%s: overview: %d\n%s", scheme, code, page)
		}
		if code, _ := get("/console/api/v1/policy"); code != 200 {
			t.Errorf("%s: the API through the console's session: %d", scheme, code)
		}
	}
}
