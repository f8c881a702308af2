package originate

import (
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testca"
	"github.com/egressd/egressd/secrets"
)

func TestCompileRefusals(t *testing.T) {
	tests := []struct {
		spec Spec
		want string
	}{
		{Spec{Host: "*.*.example.com"}, "only one wildcard"},
		{Spec{Host: "10.0.0.0/8"}, "names a host or *.domain, not an address"},
		{Spec{Host: "api.example.com:8443"}, "write the port as port: 8443"},
		{Spec{Host: "a.example.com", TLS: TLSSpec{ClientCertificate: "c"}}, "give client_certificate and client_key together"},
		{Spec{Host: "a.example.com", TLS: TLSSpec{MinVersion: "1.1"}}, `tls.min_version "1.1": write 1.2 or 1.3`},
		{Spec{Host: "a.example.com", InjectHeaders: map[string]string{"Host": "x"}}, "Host frames or routes the request"},
		{Spec{Host: "a.example.com", InjectHeaders: map[string]string{"Bad Name": "x"}}, `"Bad Name" is not a header name`},
		{Spec{Host: "a.example.com", InjectHeaders: map[string]string{"X-A": "${secret:}"}}, "names no secret"},
		{Spec{Host: "a.example.com", InjectHeaders: map[string]string{"X-A": "${env:HOME}"}}, "the only substitution is ${secret:NAME}"},
	}
	for _, tt := range tests {
		_, errs := Compile([]Spec{tt.spec})
		if len(errs) != 1 || !strings.Contains(errs[0].Error(), tt.want) {
			t.Errorf("Compile(%+v) = %v; want one error with %q", tt.spec, errs, tt.want)
		}
	}
	if _, errs := Compile([]Spec{{Host: "a.example.com"}, {Host: "A.example.com."}}); len(errs) != 1 || !strings.Contains(errs[0].Error(), "a second entry") {
		t.Errorf("two entries for one host: %v", errs)
	}
}

func TestLookup(t *testing.T) {
	table, errs := Compile([]Spec{{Host: "api.example.com", Port: 8443}, {Host: "*.example.com"}, {Host: "*.deep.example.com"}})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	tests := map[string]string{
		"api.example.com":    "api.example.com",
		"x.example.com":      "*.example.com",
		"a.b.example.com":    "*.example.com",
		"x.deep.example.com": "*.deep.example.com",
		"example.com":        "",
		"other.com":          "",
	}
	for host, want := range tests {
		got := ""
		if e := table.Lookup(host); e != nil {
			got = e.Host
		}
		if got != want {
			t.Errorf("Lookup(%s) = %q; want %q", host, got, want)
		}
	}
	if e := table.Lookup("x.example.com"); e.Port != 443 {
		t.Errorf("default port = %d; want 443", e.Port)
	}
}

// memSecrets is a secret source in memory.
type memSecrets map[string]secrets.Secret

func (m memSecrets) Get(key string) (secrets.Secret, error) {
	s, ok := m[key]
	if !ok {
		return secrets.Secret{}, secrets.ErrNotFound
	}
	return s, nil
}

func (m memSecrets) set(key, value string) {
	m[key] = secrets.Secret{Key: key, Value: secrets.NewValue(value), Version: m[key].Version + 1}
}

func TestHeaders(t *testing.T) {
	table, _ := Compile([]Spec{{Host: "a.example.com", InjectHeaders: map[string]string{
		"authorization": "Bearer ${secret:tok}", "X-Pair": "${secret:a}:${secret:b}", "X-Plain": "v1",
	}}})
	s := memSecrets{}
	s.set("tok", "t0k")
	s.set("a", "A")
	s.set("b", "B")
	o := New(s, nil, nil)
	e := table.Lookup("a.example.com")
	h, err := o.Headers(e)
	if err != nil {
		t.Fatal(err)
	}
	if h.Get("Authorization") != "Bearer t0k" || h.Get("X-Pair") != "A:B" || h.Get("X-Plain") != "v1" {
		t.Errorf("headers = %v", h)
	}
	if got := strings.Join(e.SecretNames(), ","); got != "a,b,tok" {
		t.Errorf("SecretNames = %s", got)
	}
	s.set("tok", "bad\r\nX-Injected: 1")
	if _, err := o.Headers(e); err == nil || strings.Contains(err.Error(), "X-Injected") {
		t.Errorf("a value with a line break: %v; want an error without the value", err)
	}
	delete(s, "tok")
	if _, err := o.Headers(e); err == nil || !strings.Contains(err.Error(), "secret tok does not exist") {
		t.Errorf("a missing secret: %v", err)
	}
}

// TestClientTLSCachesPerVersion: the pair is parsed again only when a secret
// changes, and a new pair changes the identity connections are kept by.
func TestClientTLSCachesPerVersion(t *testing.T) {
	ca := testca.New(t, "client CA")
	c1, k1 := ca.Issue(t, "one", time.Now().Add(time.Hour), true)
	s := memSecrets{}
	s.set("cert", c1)
	s.set("key", k1)
	table, _ := Compile([]Spec{{Host: "a.example.com", TLS: TLSSpec{ClientCertificate: "cert", ClientKey: "key"}}})
	e := table.Lookup("a.example.com")
	o := New(s, nil, nil)
	cfg1, id1, err := o.ClientTLS(e, "a.example.com")
	if err != nil || len(cfg1.Certificates) != 1 || id1 == "" || cfg1.ServerName != "a.example.com" {
		t.Fatalf("ClientTLS = %v, %q, %v", cfg1, id1, err)
	}
	if _, id, _ := o.ClientTLS(e, "a.example.com"); id != id1 {
		t.Error("the identity changed with no secret changed")
	}
	c2, k2 := ca.Issue(t, "two", time.Now().Add(time.Hour), true)
	s.set("cert", c2)
	s.set("key", k2)
	if _, id, _ := o.ClientTLS(e, "a.example.com"); id == id1 {
		t.Error("a new pair kept the old identity: old connections would be reused")
	}
	if exp, ok := o.ExpiryOf(e); !ok || exp.Before(time.Now()) {
		t.Errorf("ExpiryOf = %v, %v", exp, ok)
	}
}
