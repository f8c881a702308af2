package e2e

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/dnstest"
	"github.com/egressd/egressd/internal/testca"
)

// TestUpstreamsThroughTheBinary: curl, as a function with http_proxy set, sends plain
// HTTP; the partner gets it over mutual TLS with the certificate from the store and
// the token header; the function can read neither through the runtime API; an edit
// of the config's upstreams section is in force without a restart.
func TestUpstreamsThroughTheBinary(t *testing.T) {
	t.Parallel()
	serverCA, clientCA := testca.New(t, "partner server CA"), testca.New(t, "partner client CA")
	scert, skey := serverCA.Issue(t, "partner.test", time.Now().Add(time.Hour), false)
	pair, err := tls.X509KeyPair([]byte(scert), []byte(skey))
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 10)
	origin := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case seen <- fmt.Sprintf("cn=%s auth=%q key=%q", r.TLS.PeerCertificates[0].Subject.CommonName, r.Header.Get("Authorization"), r.Header.Get("X-Api-Key")):
		default:
		}
		io.WriteString(w, "partner says hello\n")
	}))
	origin.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCA.Pool()}
	origin.StartTLS()
	t.Cleanup(origin.Close)
	_, port, _ := net.SplitHostPort(origin.Listener.Addr().String())

	dir := t.TempDir()
	ccert, ckey := clientCA.Issue(t, "function-one", time.Now().Add(48*time.Hour), true)
	s := provisionSecrets(t, dir, map[string]string{
		"partner-cert": ccert, "partner-key": ckey, "partner-ca": serverCA.PEM, "partner-token": "tok-e2e-secret",
	})
	upstreams := func(header string) string {
		return fmt.Sprintf("upstreams:\n  - host: partner.test\n    port: %s\n    tls:\n      client_certificate: partner-cert\n"+
			"      client_key: partner-key\n      ca: partner-ca\n    inject_headers:\n      %s: \"Bearer ${secret:partner-token}\"\n", port, header)
	}
	cfg := daemonConfig{
		dnsServer: dnstest.Start(t, map[string]dnstest.Record{"partner.test": {A: []string{"127.0.0.1"}}}),
		files:     map[string]string{"allow.d/a.txt": "partner.test:" + port + "\n127.0.0.1/32\n"},
		extra:     secretsConfig(s, "") + upstreams("Authorization"),
	}
	d := startDaemon(t, cfg)

	out, code := curl(t, []string{"http_proxy=" + d.proxyURL()}, "-H", "Authorization: Bearer made-up", "http://partner.test/x")
	if code != 0 || out != "partner says hello\n" {
		t.Fatalf("curl through egressd: exit %d, %q", code, out)
	}
	if got := <-seen; got != `cn=function-one auth="Bearer tok-e2e-secret" key=""` {
		t.Errorf("the partner saw %s; want our client certificate and the token, not the function's", got)
	}
	d.waitLog(`"originated":"mtls","injected":"Authorization"`, 5*time.Second)
	for _, secret := range []string{"partner-key", "partner-token"} {
		out, _ := curl(t, []string{"http_proxy=" + d.proxyURL()}, "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://egressd.internal/v1/secrets/"+secret)
		if out != "403" {
			t.Errorf("a function reading %s: %s; want 403", secret, out)
		}
	}
	if !strings.Contains(d.scrape(), `egressd_client_certificate_expiry_seconds{upstream="partner.test"}`) {
		t.Error("no egressd_client_certificate_expiry_seconds for partner.test")
	}
	if strings.Contains(d.logs.String(), "tok-e2e-secret") || strings.Contains(d.logs.String(), "PRIVATE KEY") {
		t.Error("the log holds a secret value")
	}

	// /v1/policy and explain name the entry and its secrets, never their values.
	pol, _ := curl(t, nil, "-H", "Authorization: Bearer "+s.token, "http://"+d.admin+"/v1/policy")
	if !strings.Contains(pol, `"client_certificate": "partner-cert"`) || !strings.Contains(pol, `"inject_headers": [`) ||
		strings.Contains(pol, "tok-e2e-secret") || strings.Contains(pol, "BEGIN") {
		t.Errorf("/v1/policy:\n%s", pol)
	}
	exp, _, _ := egressd(t, d.dir, "explain", "--config", "egressd.yaml", "partner.test:"+port)
	if !strings.Contains(exp, "upstream: egressd makes the TLS connection to port "+port+" itself, with the client certificate in secret partner-cert (key in secret partner-key)") {
		t.Errorf("explain:\n%s", exp)
	}

	// The upstreams section edited in place: the header is now X-Api-Key.
	cfgPath := filepath.Join(d.dir, "egressd.yaml")
	data, _ := os.ReadFile(cfgPath)
	writeFile(t, cfgPath, strings.Replace(string(data), "      Authorization: ", "      X-Api-Key: ", 1))
	d.waitLog("upstreams reloaded", 5*time.Second)
	drainStrings(seen)
	if out, code := curl(t, []string{"http_proxy=" + d.proxyURL()}, "http://partner.test/x"); code != 0 || out != "partner says hello\n" {
		t.Fatalf("after the edit: exit %d %q", code, out)
	}
	if got := <-seen; got != `cn=function-one auth="" key="Bearer tok-e2e-secret"` {
		t.Errorf("after the edit the partner saw %s; want X-Api-Key only", got)
	}

	// check warns that the header reaches plain-HTTP requests only.
	_, stderr, code := egressd(t, d.dir, "check", "--config", "egressd.yaml")
	if code != 0 || !strings.Contains(stderr, "warning: upstreams partner.test: X-Api-Key reach requests sent as http://partner.test/... only") {
		t.Errorf("check: exit %d, %s", code, stderr)
	}
}

func drainStrings(c chan string) {
	for {
		select {
		case <-c:
		default:
			return
		}
	}
}
