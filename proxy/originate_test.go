package proxy

import (
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/egressd/egressd/dialer"
	"github.com/egressd/egressd/internal/testca"
	"github.com/egressd/egressd/originate"
	"github.com/egressd/egressd/secrets"
)

// memSecrets is a secret source in memory: each Set makes a new version.
type memSecrets struct {
	mu sync.Mutex
	m  map[string]secrets.Secret
}

func (s *memSecrets) Set(key, value string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]secrets.Secret{}
	}
	s.m[key] = secrets.Secret{Key: key, Value: secrets.NewValue(value), Version: s.m[key].Version + 1}
}

func (s *memSecrets) Delete(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, key)
}

func (s *memSecrets) Get(key string) (secrets.Secret, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, ok := s.m[key]
	if !ok {
		return secrets.Secret{}, secrets.ErrNotFound
	}
	return sec, nil
}

// mtlsSetup is a partner origin that requires a client certificate, and a proxy with
// an upstreams entry for it.
type mtlsSetup struct {
	origin   *httptest.Server
	port     string
	serverCA *testca.CA
	clientCA *testca.CA
	secrets  *memSecrets
	proxy    *Proxy
	addr     string
	log      *syncBuffer
	reg      *prometheus.Registry
	seen     chan string // the client certificate's CN of each request, and its headers
}

func newMTLS(t *testing.T, spec originate.Spec) *mtlsSetup {
	t.Helper()
	m := &mtlsSetup{serverCA: testca.New(t, "server CA"), clientCA: testca.New(t, "client CA"), secrets: &memSecrets{}, log: &syncBuffer{}, seen: make(chan string, 100)}
	scert, skey := m.serverCA.Issue(t, "partner.test", time.Now().Add(time.Hour), false)
	pair, err := tls.X509KeyPair([]byte(scert), []byte(skey))
	if err != nil {
		t.Fatal(err)
	}
	clientRoots := m.clientCA.Pool()
	m.origin = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cn := ""
		if len(r.TLS.PeerCertificates) > 0 {
			cn = r.TLS.PeerCertificates[0].Subject.CommonName
		}
		select {
		case m.seen <- cn + " auth=" + r.Header.Get("Authorization") + " host=" + r.Host:
		default:
		}
		io.WriteString(w, "hello "+cn)
	}))
	m.origin.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientRoots}
	m.origin.StartTLS()
	t.Cleanup(m.origin.Close)
	_, m.port, _ = net.SplitHostPort(m.origin.Listener.Addr().String())

	ccert, ckey := m.clientCA.Issue(t, "function-one", time.Now().Add(time.Hour), true)
	m.secrets.Set("partner-cert", ccert)
	m.secrets.Set("partner-key", ckey)
	m.secrets.Set("partner-ca", m.serverCA.PEM)
	m.secrets.Set("partner-token", "tok-123")

	if spec.Port == 0 {
		spec.Port = uint16(atoiPort(t, m.port))
	}
	table, errs := originate.Compile([]originate.Spec{spec})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	res := &namesResolver{addr: netip.MustParseAddr("127.0.0.1")}
	reg := prometheus.NewRegistry()
	o := originate.New(m.secrets, nil, nil)
	p, addr := serveProxy(t, Options{
		Dialer:     dialer.New(dialer.Options{Resolver: res, Exempt: exemptAll{}}),
		Originator: o, Logger: slog.New(slog.NewJSONHandler(m.log, nil)), Registerer: reg,
	}, "partner.test:"+m.port, "other.test")
	if err := o.Register(reg, p.Upstreams); err != nil {
		t.Fatal(err)
	}
	p.SetUpstreams(table)
	m.proxy, m.addr, m.reg = p, addr, reg
	return m
}

func atoiPort(t *testing.T, s string) int {
	t.Helper()
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}

func partnerSpec() originate.Spec {
	return originate.Spec{
		Host:          "partner.test",
		TLS:           originate.TLSSpec{ClientCertificate: "partner-cert", ClientKey: "partner-key", CA: "partner-ca"},
		InjectHeaders: map[string]string{"Authorization": "Bearer ${secret:partner-token}"},
	}
}

// get sends a plain-HTTP request through the proxy as a function would.
func (m *mtlsSetup) get(t *testing.T, url string, header ...string) (int, string) {
	t.Helper()
	u, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(header); i += 2 {
		u.Header.Set(header[i], header[i+1])
	}
	resp, err := m.client().Do(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (m *mtlsSetup) client() *http.Client {
	u, _ := url.Parse("http://" + m.addr)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(u)}}
}

// TestOriginatedMutualTLS: a function's plain request reaches the partner over mutual
// TLS with the certificate from the secret store, and the token header is set,
// replacing what the function sent; the access log says so with no value.
func TestOriginatedMutualTLS(t *testing.T) {
	m := newMTLS(t, partnerSpec())
	code, body := m.get(t, "http://partner.test/x", "Authorization", "Bearer function-made-up")
	if code != 200 || body != "hello function-one" {
		t.Fatalf("got %d %q; want 200 from the partner, with our client certificate", code, body)
	}
	if seen := <-m.seen; seen != "function-one auth=Bearer tok-123 host=partner.test:"+m.port {
		t.Errorf("the partner saw %q; want the injected token, not the function's", seen)
	}
	if !waitFor(func() bool { return strings.Contains(m.log.String(), `"originated":"mtls","injected":"Authorization"`) }) {
		t.Errorf("access log lacks the origination:\n%s", m.log.String())
	}
	for _, leak := range []string{"tok-123", "PRIVATE KEY"} {
		if strings.Contains(m.log.String(), leak) {
			t.Errorf("the log holds a secret value (%s)", leak)
		}
	}
	// Not injected on another host.
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "auth="+r.Header.Get("Authorization")) }))
	defer other.Close()
	m.proxy.SetPolicy(compileRules(t, "partner.test:"+m.port, other.Listener.Addr().String()))
	if _, body := m.get(t, "http://"+other.Listener.Addr().String()+"/"); body != "auth=" {
		t.Errorf("another host got %q; the token goes to the partner only", body)
	}
	// The expiry metric.
	if n, err := testutil.GatherAndCount(m.reg, "egressd_client_certificate_expiry_seconds"); err != nil || n != 1 {
		t.Errorf("egressd_client_certificate_expiry_seconds series: %d, %v; want 1", n, err)
	}
}

// TestOriginationRotation: a new certificate put in the secret while requests flow is
// used for new connections at once; no request fails, and the old connections are
// not reused.
func TestOriginationRotation(t *testing.T) {
	m := newMTLS(t, partnerSpec())
	stop := make(chan struct{})
	var failed, done atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := m.client()
			for i := 0; i < 2000; i++ { // bounded; stopped below
				select {
				case <-stop:
					return
				default:
				}
				resp, err := c.Get("http://partner.test/x")
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
				}
				done.Add(1)
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	// The certificate, then the key, one update each, as an operator would: between
	// the two the pair does not match, and the last good pair serves.
	newCert, newKey := m.clientCA.Issue(t, "function-two", time.Now().Add(time.Hour), true)
	m.secrets.Set("partner-cert", newCert)
	time.Sleep(100 * time.Millisecond)
	m.secrets.Set("partner-key", newKey)
	drain(m.seen)
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if f := failed.Load(); f != 0 {
		t.Errorf("%d of %d requests failed during the rotation; want none", f, done.Load())
	}
	// Every request from now on is made with the new certificate.
	drain(m.seen)
	for range 5 {
		if code, body := m.get(t, "http://partner.test/x"); code != 200 || body != "hello function-two" {
			t.Fatalf("after the rotation: %d %q; want the new certificate", code, body)
		}
	}
	t.Logf("%d requests during the rotation", done.Load())
}

func drain(c chan string) {
	for {
		select {
		case <-c:
		default:
			return
		}
	}
}

// TestOriginationFailures: each cause is named in the 502.
func TestOriginationFailures(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, m *mtlsSetup)
		want  string
	}{
		{"server not trusted", func(t *testing.T, m *mtlsSetup) { m.secrets.Set("partner-ca", testca.New(t, "other").PEM) },
			"x509: certificate signed by unknown authority"},
		{"expired client certificate", func(t *testing.T, m *mtlsSetup) {
			c, k := m.clientCA.Issue(t, "function-one", time.Now().Add(-time.Minute), true)
			m.secrets.Set("partner-cert", c)
			m.secrets.Set("partner-key", k)
		}, "the client certificate in secret partner-cert expired at "},
		{"key not matching the certificate", func(t *testing.T, m *mtlsSetup) {
			_, k := m.clientCA.Issue(t, "function-one", time.Now().Add(time.Hour), true)
			m.secrets.Set("partner-key", k)
		}, "the private key does not match the certificate"},
		{"server refuses our certificate", func(t *testing.T, m *mtlsSetup) {
			c, k := testca.New(t, "untrusted client CA").Issue(t, "function-one", time.Now().Add(time.Hour), true)
			m.secrets.Set("partner-cert", c)
			m.secrets.Set("partner-key", k)
		}, "the server refused the handshake, most likely our client certificate (remote error: tls: "},
		{"certificate secret missing", func(t *testing.T, m *mtlsSetup) { m.secrets.Delete("partner-key") },
			"secret partner-key does not exist"},
		{"header secret missing", func(t *testing.T, m *mtlsSetup) { m.secrets.Delete("partner-token") },
			"secret partner-token does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMTLS(t, partnerSpec())
			tt.setup(t, m)
			code, body := m.get(t, "http://partner.test/x")
			if code != 502 || !strings.Contains(body, tt.want) {
				t.Errorf("got %d %q; want 502 saying %q", code, body, tt.want)
			}
			select {
			case seen := <-m.seen:
				if strings.Contains(tt.name, "missing") {
					t.Errorf("the partner got a request (%s) although a secret was missing", seen)
				}
			default:
			}
			if strings.Contains(m.log.String(), "tok-123") {
				t.Error("the log holds the token")
			}
		})
	}
}

// TestOriginationDecidesTheEntryPort: the port egressd connects to is what the
// policy decides, whatever port the function's URL names.
func TestOriginationDecidesTheEntryPort(t *testing.T) {
	m := newMTLS(t, partnerSpec())
	m.proxy.SetPolicy(compileRules(t, "partner.test:80")) // the URL's port, not the entry's
	code, body := m.get(t, "http://partner.test/x")
	if code != 403 || !strings.Contains(body, "partner.test:"+m.port) {
		t.Errorf("got %d %q; want 403 for partner.test:%s, where egressd would connect", code, body, m.port)
	}
}

// TestOriginatedAbsoluteHTTPS: "GET https://partner/..." sent to the proxy in
// absolute form gets the same origination as http://.
func TestOriginatedAbsoluteHTTPS(t *testing.T) {
	m := newMTLS(t, partnerSpec())
	_, br := rawRequest(t, m.addr, "GET https://partner.test/x HTTP/1.1\r\nHost: partner.test\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "hello function-one" {
		t.Errorf("got %d %q; want the partner's answer over our mutual TLS", resp.StatusCode, body)
	}
}
