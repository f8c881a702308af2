// Package originate is what egressd does for a host that has an upstreams entry: it
// makes the TLS connection to the host itself, with a client certificate kept in the
// secret store (mutual TLS), and it adds headers whose values come from the secret
// store (an API token), so that the function sends plain HTTP and never holds the key
// or the token.
//
// A Table is the compiled upstreams entries, immutable and swapped whole on a reload;
// an Originator turns an entry into a TLS configuration and headers, reading the
// secrets at each new connection (so that an updated certificate is used at once) and
// caching what it parsed per secret version. The package decides nothing: the policy
// does, and the proxy calls it only for allowed targets.
package originate

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/secrets"
)

// Spec is one upstreams entry as configured.
type Spec struct {
	Host string // an exact host, or *.example.com
	Port uint16 // where egressd connects; 0 means 443
	TLS  TLSSpec
	// InjectHeaders are set on every request to the host, replacing what the
	// function sent; values may hold ${secret:NAME}.
	InjectHeaders map[string]string
}

// TLSSpec is an entry's TLS: all fields optional (no client certificate, system roots).
type TLSSpec struct {
	ClientCertificate string // secret holding the PEM certificate chain
	ClientKey         string // secret holding the PEM private key
	CA                string // a secret, or a file path (it has a '/'), with PEM roots
	ServerName        string // SNI and verification name; empty: the host
	MinVersion        string // "1.2" or "1.3"; empty: 1.2
}

// Entry is a compiled upstreams entry.
type Entry struct {
	Spec
	pattern  string // the host, or the domain under "*."
	wildcard bool
	minTLS   uint16
	headers  []header
}

type header struct {
	name  string // canonical
	parts []part
}

// part is literal text, or (secret != "") a secret's value.
type part struct {
	text, secret string
}

// Name says which entry this is: its host pattern, as written.
func (e *Entry) Name() string { return e.Host }

// MutualTLS reports whether the entry presents a client certificate.
func (e *Entry) MutualTLS() bool { return e.TLS.ClientCertificate != "" }

// HeaderNames are the names of the headers the entry injects, sorted.
func (e *Entry) HeaderNames() []string {
	names := make([]string, len(e.headers))
	for i, h := range e.headers {
		names[i] = h.name
	}
	return names
}

// SecretNames are the secrets the entry reads, sorted, for explain and /v1/policy.
func (e *Entry) SecretNames() []string {
	var names []string
	for _, s := range []string{e.TLS.ClientCertificate, e.TLS.ClientKey} {
		if s != "" {
			names = append(names, s)
		}
	}
	if e.TLS.CA != "" && !strings.Contains(e.TLS.CA, "/") {
		names = append(names, e.TLS.CA)
	}
	for _, h := range e.headers {
		for _, p := range h.parts {
			if p.secret != "" {
				names = append(names, p.secret)
			}
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// Describe says in one line what egressd does for the host: for explain.
func (e *Entry) Describe() string {
	var b strings.Builder
	fmt.Fprintf(&b, "egressd makes the TLS connection to port %d itself", e.Port)
	if e.MutualTLS() {
		fmt.Fprintf(&b, ", with the client certificate in secret %s (key in secret %s)", e.TLS.ClientCertificate, e.TLS.ClientKey)
	}
	if e.TLS.CA != "" {
		fmt.Fprintf(&b, ", trusting the roots in %s", e.TLS.CA)
	}
	if len(e.headers) > 0 {
		fmt.Fprintf(&b, "; it sets %s", strings.Join(e.HeaderNames(), ", "))
	}
	if s := e.SecretNames(); len(s) > 0 {
		fmt.Fprintf(&b, " (secrets: %s)", strings.Join(s, ", "))
	}
	return b.String()
}

// Table is the compiled entries: immutable, safe for concurrent use.
type Table struct {
	exact   map[string]*Entry
	wild    map[string]*Entry // by the domain under "*."
	entries []*Entry
}

// Entries returns every entry, in the order configured.
func (t *Table) Entries() []*Entry {
	if t == nil {
		return nil
	}
	return t.entries
}

var secretRef = regexp.MustCompile(`\$\{secret:([^}]*)\}`)

// forbiddenHeaders are never injected: they frame or route the request, or are the
// proxy's own.
var forbiddenHeaders = map[string]bool{
	"Host": true, "Content-Length": true, "Transfer-Encoding": true, "Connection": true,
	"Upgrade": true, "Te": true, "Trailer": true, "Keep-Alive": true, "Proxy-Authorization": true,
	"Proxy-Connection": true, "Expect": true,
}

// Compile checks and compiles specs. Each problem says which entry and what to do.
func Compile(specs []Spec) (*Table, []error) {
	t := &Table{exact: map[string]*Entry{}, wild: map[string]*Entry{}}
	var errs []error
	for i, s := range specs {
		where := fmt.Sprintf("upstreams[%d] (%s)", i, s.Host)
		fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(where+": "+format, args...)) }
		r, err := policy.ParseRule(s.Host)
		switch {
		case err != nil:
			fail("host: %v", err)
			continue
		case r.Kind != policy.KindExact && r.Kind != policy.KindWildcard:
			fail("host: an upstreams entry names a host or *.domain, not an address")
			continue
		case r.Port != 0:
			fail("host: write the port as port: %d, not in the host", r.Port)
			continue
		}
		e := &Entry{Spec: s, pattern: r.Host, wildcard: r.Kind == policy.KindWildcard}
		if e.Port == 0 {
			e.Port = 443
		}
		if (s.TLS.ClientCertificate == "") != (s.TLS.ClientKey == "") {
			fail("tls: give client_certificate and client_key together (the secrets with the PEM certificate and its key)")
		}
		switch s.TLS.MinVersion {
		case "", "1.2":
			e.minTLS = tls.VersionTLS12
		case "1.3":
			e.minTLS = tls.VersionTLS13
		default:
			fail("tls.min_version %q: write 1.2 or 1.3", s.TLS.MinVersion)
		}
		names := make([]string, 0, len(s.InjectHeaders))
		for name := range s.InjectHeaders {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			h, err := compileHeader(name, s.InjectHeaders[name])
			if err != nil {
				fail("inject_headers: %v", err)
				continue
			}
			e.headers = append(e.headers, h)
		}
		key := e.pattern
		m := t.exact
		if e.wildcard {
			m = t.wild
		}
		if _, dup := m[key]; dup {
			fail("host: a second entry for %s; merge them", s.Host)
			continue
		}
		m[key] = e
		t.entries = append(t.entries, e)
	}
	return t, errs
}

func compileHeader(name, value string) (header, error) {
	canon := textproto.CanonicalMIMEHeaderKey(name)
	if !validToken(name) {
		return header{}, fmt.Errorf("%q is not a header name", name)
	}
	if forbiddenHeaders[canon] {
		return header{}, fmt.Errorf("%s frames or routes the request and cannot be injected", canon)
	}
	h := header{name: canon}
	rest := value
	for {
		loc := secretRef.FindStringSubmatchIndex(rest)
		if loc == nil {
			break
		}
		if loc[0] > 0 {
			h.parts = append(h.parts, part{text: rest[:loc[0]]})
		}
		secret := rest[loc[2]:loc[3]]
		if secret == "" {
			return header{}, fmt.Errorf("%s: ${secret:} names no secret; write ${secret:NAME}", canon)
		}
		h.parts = append(h.parts, part{secret: secret})
		rest = rest[loc[1]:]
	}
	if strings.Contains(rest, "${") {
		return header{}, fmt.Errorf("%s: %q: the only substitution is ${secret:NAME}", canon, value)
	}
	if rest != "" {
		h.parts = append(h.parts, part{text: rest})
	}
	for _, p := range h.parts {
		if strings.ContainsAny(p.text, "\r\n") {
			return header{}, fmt.Errorf("%s: a value cannot hold a line break", canon)
		}
	}
	return h, nil
}

func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// Lookup returns the entry for host (normalized, as the policy decided it), or nil:
// an exact entry first, then the wildcard entry of the nearest parent domain.
func (t *Table) Lookup(host string) *Entry {
	if t == nil || len(t.entries) == 0 {
		return nil
	}
	if e := t.exact[host]; e != nil {
		return e
	}
	for h := host; ; {
		i := strings.IndexByte(h, '.')
		if i < 0 {
			return nil
		}
		h = h[i+1:]
		if e := t.wild[h]; e != nil {
			return e
		}
	}
}

// SecretSource reads secrets; *secrets.Store is one.
type SecretSource interface {
	Get(key string) (secrets.Secret, error)
}

// Originator builds TLS configurations and headers from the secret store.
type Originator struct {
	secrets SecretSource
	now     func() time.Time
	// base is the trust for entries without a ca: nil means the system roots.
	base *x509.CertPool

	mu    sync.Mutex
	certs map[string]*loadedCert // by "cert-secret/key-secret"
	pools map[string]*loadedPool // by CA secret or file
	// sessions resume TLS sessions with a partner, per entry and certificate: a new
	// connection then costs no full handshake. A new certificate gets a new cache.
	sessions map[string]tls.ClientSessionCache
}

type loadedCert struct {
	certVer, keyVer int64
	cert            tls.Certificate
	leaf            *x509.Certificate
	fingerprint     string
}

type loadedPool struct {
	version int64 // of the secret; for a file, its modification time in ns
	pool    *x509.CertPool
}

// New returns an Originator reading s. base, if not nil, is the trust for entries
// without a ca (proxy.upstream_ca_file added to the system roots, say).
func New(s SecretSource, base *x509.CertPool, now func() time.Time) *Originator {
	if now == nil {
		now = time.Now
	}
	return &Originator{secrets: s, base: base, now: now, certs: map[string]*loadedCert{}, pools: map[string]*loadedPool{},
		sessions: map[string]tls.ClientSessionCache{}}
}

// Error is a failure to originate, before or during the handshake: its text names
// the cause and is what the client's 502 says.
type Error struct{ Msg string }

func (e *Error) Error() string { return e.Msg }

func errorf(format string, args ...any) error { return &Error{Msg: fmt.Sprintf(format, args...)} }

// ClientTLS returns the TLS configuration for a connection to host under e, and the
// identity of the client certificate in it ("" without one), for keeping connections
// apart per certificate: a rotated certificate gets new connections.
func (o *Originator) ClientTLS(e *Entry, host string) (*tls.Config, string, error) {
	cfg := &tls.Config{ServerName: host, MinVersion: e.minTLS, NextProtos: []string{"http/1.1"}, RootCAs: o.base}
	if e.TLS.ServerName != "" {
		cfg.ServerName = e.TLS.ServerName
	}
	if e.TLS.CA != "" {
		pool, err := o.pool(e.TLS.CA)
		if err != nil {
			return nil, "", err
		}
		cfg.RootCAs = pool
	}
	id := ""
	if e.MutualTLS() {
		lc, err := o.cert(e.TLS.ClientCertificate, e.TLS.ClientKey)
		if err != nil {
			return nil, "", err
		}
		if now := o.now(); now.After(lc.leaf.NotAfter) {
			return nil, "", errorf("the client certificate in secret %s expired at %s; put a new one in the secret",
				e.TLS.ClientCertificate, lc.leaf.NotAfter.UTC().Format(time.RFC3339))
		}
		cert := lc.cert
		cfg.Certificates = []tls.Certificate{cert}
		id = lc.fingerprint
	}
	cfg.ClientSessionCache = o.sessionCache(e.Host + "|" + cfg.ServerName + "|" + id)
	return cfg, id, nil
}

// sessionCache returns the session cache for key, made on first use. Caches of
// certificates no longer in use are dropped once there are many.
func (o *Originator) sessionCache(key string) tls.ClientSessionCache {
	o.mu.Lock()
	defer o.mu.Unlock()
	c := o.sessions[key]
	if c == nil {
		if len(o.sessions) >= 1024 {
			clear(o.sessions)
		}
		c = tls.NewLRUClientSessionCache(64)
		o.sessions[key] = c
	}
	return c
}

// cert returns the parsed pair, parsing again when either secret changed version.
func (o *Originator) cert(certName, keyName string) (*loadedCert, error) {
	cs, err := o.get(certName)
	if err != nil {
		return nil, err
	}
	ks, err := o.get(keyName)
	if err != nil {
		return nil, err
	}
	k := certName + "/" + keyName
	o.mu.Lock()
	defer o.mu.Unlock()
	prev := o.certs[k]
	if prev != nil && prev.certVer == cs.Version && prev.keyVer == ks.Version {
		return prev, nil
	}
	pair, err := tls.X509KeyPair([]byte(cs.Value.Reveal()), []byte(ks.Value.Reveal()))
	if err != nil {
		if prev != nil && !o.now().After(prev.leaf.NotAfter) {
			// A rotation that updates the certificate and the key one after the
			// other passes through a mismatched pair: the last good pair serves until
			// the second update lands. (One secret holding both, named as
			// client_certificate and client_key, rotates in one step.)
			return prev, nil
		}
		return nil, errorf("the client certificate in secret %s and the key in secret %s do not make a pair: %s",
			certName, keyName, pairError(err))
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, errorf("the client certificate in secret %s does not parse: %v", certName, err)
	}
	sum := sha256.Sum256(pair.Certificate[0])
	lc := &loadedCert{certVer: cs.Version, keyVer: ks.Version, cert: pair, leaf: leaf, fingerprint: hex.EncodeToString(sum[:8])}
	o.certs[k] = lc
	return lc, nil
}

// pairError says what tls.X509KeyPair found, without quoting the key.
func pairError(err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "does not match"):
		return "the private key does not match the certificate"
	case strings.Contains(msg, "failed to find any PEM data in certificate"):
		return "no PEM certificate in the certificate secret"
	case strings.Contains(msg, "failed to find any PEM data in key"), strings.Contains(msg, "failed to find PEM block with type ending"):
		return "no PEM private key in the key secret"
	}
	return strings.TrimPrefix(msg, "tls: ")
}

// pool returns the roots in a secret or a file (a name with a '/').
func (o *Originator) pool(ca string) (*x509.CertPool, error) {
	var pem []byte
	var version int64
	if strings.Contains(ca, "/") {
		fi, err := os.Stat(ca)
		if err != nil {
			return nil, errorf("ca file %s: %v", ca, err)
		}
		version = fi.ModTime().UnixNano()
		o.mu.Lock()
		lp := o.pools[ca]
		o.mu.Unlock()
		if lp != nil && lp.version == version {
			return lp.pool, nil
		}
		if pem, err = os.ReadFile(ca); err != nil {
			return nil, errorf("ca file %s: %v", ca, err)
		}
	} else {
		s, err := o.get(ca)
		if err != nil {
			return nil, err
		}
		version = s.Version
		o.mu.Lock()
		lp := o.pools[ca]
		o.mu.Unlock()
		if lp != nil && lp.version == version {
			return lp.pool, nil
		}
		pem = []byte(s.Value.Reveal())
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errorf("ca %s holds no PEM certificate", ca)
	}
	o.mu.Lock()
	o.pools[ca] = &loadedPool{version: version, pool: pool}
	o.mu.Unlock()
	return pool, nil
}

func (o *Originator) get(name string) (secrets.Secret, error) {
	if o.secrets == nil {
		return secrets.Secret{}, errorf("secret %s does not exist: egressd has no secret store (secrets.file)", name)
	}
	s, err := o.secrets.Get(name)
	if errors.Is(err, secrets.ErrNotFound) {
		return secrets.Secret{}, errorf("secret %s does not exist; create it (egressd secrets create %s)", name, name)
	}
	if err != nil {
		return secrets.Secret{}, errorf("secret %s cannot be read: %v", name, err)
	}
	return s, nil
}

// Headers returns the headers e injects, with the secrets' values. A secret that
// does not exist is an error: the request is not sent without its header.
func (o *Originator) Headers(e *Entry) (http.Header, error) {
	if len(e.headers) == 0 {
		return nil, nil
	}
	h := make(http.Header, len(e.headers))
	for _, hd := range e.headers {
		var b strings.Builder
		for _, p := range hd.parts {
			if p.secret == "" {
				b.WriteString(p.text)
				continue
			}
			s, err := o.get(p.secret)
			if err != nil {
				return nil, err
			}
			v := s.Value.Reveal()
			if strings.ContainsAny(v, "\r\n") {
				return nil, errorf("secret %s holds a line break and cannot go into the %s header", p.secret, hd.name)
			}
			b.WriteString(v)
		}
		h[hd.name] = []string{b.String()}
	}
	return h, nil
}

// Explain turns a failed handshake or a refusal by the server into the cause an
// operator acts on.
func Explain(err error) string {
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	msg := err.Error()
	switch {
	case errors.As(err, &ua):
		return "the server's certificate is not trusted (" + ua.Error() + "); set tls.ca to the roots that sign it"
	case errors.As(err, &he):
		return "the server's certificate is for another name (" + he.Error() + "); check the host, or set tls.server_name"
	case errors.As(err, &ci):
		return "the server's certificate is not valid (" + ci.Error() + ")"
	case strings.Contains(msg, "remote error: tls:"):
		i := strings.Index(msg, "remote error: tls:")
		return "the server refused the handshake, most likely our client certificate (" + msg[i:] + ")"
	}
	return msg
}

// ExpiryOf returns when the client certificate of e expires, for the metric.
func (o *Originator) ExpiryOf(e *Entry) (time.Time, bool) {
	if !e.MutualTLS() {
		return time.Time{}, false
	}
	lc, err := o.cert(e.TLS.ClientCertificate, e.TLS.ClientKey)
	if err != nil {
		return time.Time{}, false
	}
	return lc.leaf.NotAfter, true
}
