package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/elazarl/goproxy"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/egressd/egressd/guard"
	"github.com/egressd/egressd/policy"
)

// Options configure a Proxy. Zero values are documented per field.
type Options struct {
	// Report lets denied requests through, logging and counting them as "report".
	Report bool
	// DialTimeout bounds resolving and connecting to an upstream. If zero, 10s.
	DialTimeout time.Duration
	// IdleTimeout closes keep-alive connections and tunnels with no bytes in either
	// direction after this long. If zero, 5m.
	IdleTimeout time.Duration
	// ReadHeaderTimeout bounds reading request headers. If zero, 10s.
	ReadHeaderTimeout time.Duration
	// MaxHeaderBytes bounds request headers. If zero, 64 KiB.
	MaxHeaderBytes int
	// MaxConnections bounds concurrent client connections, tunnels included; past it
	// a request gets 503. If zero, 4096.
	MaxConnections int
	// CloseRevokedTunnels closes an open tunnel when SetPolicy installs a policy that
	// no longer allows its target.
	CloseRevokedTunnels bool
	// Resolver resolves upstream names. If nil, net.DefaultResolver.
	Resolver Resolver
	// Guard refuses private and other non-public destination addresses, except those
	// that an IP or CIDR rule of the policy in force covers. If nil, a Guard with no
	// further exemptions: the guard cannot be turned off.
	Guard *guard.Guard
	// LocalHandler serves requests in origin form ("GET /path"), which are for egressd
	// itself and never forwarded. If nil, they get 404.
	LocalHandler http.Handler
	// Denials, if set, is told about every denied target (and, in report mode, every
	// target that would be denied).
	Denials DenialRecorder
	// Logger receives the access log and errors. If nil, logs are discarded.
	Logger *slog.Logger
	// Registerer receives the proxy's metrics. If nil, they are not registered.
	Registerer prometheus.Registerer
	// Now is the clock for durations. If nil, time.Now.
	Now func() time.Time
}

// DenialRecorder notes denied targets; *diag.Denials is one.
type DenialRecorder interface {
	Record(target, reason, hint, client string, reportOnly bool, at time.Time)
}

// Proxy is the forward proxy. Create it with New, give it a policy with SetPolicy,
// then Serve a listener.
type Proxy struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics
	policy  atomic.Pointer[policy.Matcher]
	dialer  *dialer
	gp      *goproxy.ProxyHttpServer
	// upstreams sends simple plain-HTTP requests; upstreamRT is it as goproxy asks
	// for it. The rest goes through gp.Tr.
	upstreams  *upstreams
	upstreamRT goproxy.RoundTripper
	srv        *http.Server
	tunnels    *tunnelSet
	conns      atomic.Int64 // client connections open, tunnels included
	// tunnelsLive counts tunnels from their start until their access log line is
	// written: what a shutdown waits for.
	tunnelsLive atomic.Int64
	ready       atomic.Bool
}

// New returns a Proxy. It starts nothing: no listener, no goroutine.
func New(opts Options) (*Proxy, error) {
	setDefault(&opts.DialTimeout, 10*time.Second)
	setDefault(&opts.IdleTimeout, 5*time.Minute)
	setDefault(&opts.ReadHeaderTimeout, 10*time.Second)
	setDefault(&opts.MaxHeaderBytes, 64<<10)
	setDefault(&opts.MaxConnections, 4096)
	if opts.Resolver == nil {
		opts.Resolver = net.DefaultResolver
	}
	if opts.Guard == nil {
		opts.Guard = guard.New(nil)
	}
	if opts.LocalHandler == nil {
		opts.LocalHandler = http.NotFoundHandler()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("registering proxy metrics: %w", err)
	}
	p := &Proxy{
		opts:    opts,
		log:     opts.Logger,
		metrics: m,
		dialer:  &dialer{resolver: opts.Resolver, timeout: opts.DialTimeout, guard: opts.Guard},
		tunnels: newTunnelSet(),
	}
	// Exempt from the guard what the policy in force covers, as it is at each dial.
	p.dialer.exempt = guard.ExemptFunc(func(a netip.Addr) bool { return p.policy.Load().Exempt(a) })
	p.gp = p.newGoproxy()
	p.upstreams = &upstreams{
		dial:        p.dialer.dial,
		idleTimeout: opts.IdleTimeout,
		maxIdle:     256,
		maxIdleAll:  1024,
		now:         opts.Now,
	}
	p.upstreamRT = goproxy.RoundTripperFunc(func(r *http.Request, _ *goproxy.ProxyCtx) (*http.Response, error) {
		return p.upstreams.RoundTrip(r)
	})
	p.srv = &http.Server{
		Handler:           p,
		ReadHeaderTimeout: opts.ReadHeaderTimeout,
		IdleTimeout:       opts.IdleTimeout,
		MaxHeaderBytes:    opts.MaxHeaderBytes,
		ConnState:         p.trackConn,
		ErrorLog:          slog.NewLogLogger(opts.Logger.Handler(), slog.LevelDebug),
	}
	return p, nil
}

func setDefault[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}

// newGoproxy configures goproxy: our handlers decide, our transport dials, and
// nothing is taken from the environment (goproxy reads HTTP_PROXY by default, which
// in a pod points at egressd itself).
func (p *Proxy) newGoproxy() *goproxy.ProxyHttpServer {
	gp := goproxy.NewProxyHttpServer()
	gp.Logger = goproxyLogger{p.log}
	gp.Verbose = false
	gp.KeepAcceptEncoding = true
	gp.ConnectDial = nil
	gp.Tr = &http.Transport{
		Proxy:                 nil,
		DialContext:           p.dialer.dialContext,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       p.opts.IdleTimeout,
		TLSHandshakeTimeout:   p.opts.DialTimeout,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true, // pass the client's Accept-Encoding and bodies as they are
		ForceAttemptHTTP2:     false,
	}
	gp.NonproxyHandler = p.opts.LocalHandler
	gp.OnRequest().DoFunc(p.onRequest)
	gp.OnResponse().DoFunc(p.onResponse)
	gp.OnRequest().HandleConnectFunc(p.onConnect)
	return gp
}

// SetPolicy installs m for every request decided from now on. Requests in flight
// keep the decision they had; open tunnels that m no longer allows are closed when
// Options.CloseRevokedTunnels is set.
func (p *Proxy) SetPolicy(m *policy.Matcher) {
	p.policy.Store(m)
	if p.opts.CloseRevokedTunnels && !p.opts.Report {
		p.tunnels.revoke(m, p.log)
	}
}

// Policy returns the policy in force, or nil before the first SetPolicy.
func (p *Proxy) Policy() *policy.Matcher { return p.policy.Load() }

// ProtectListener records the address of another listener of this process (such as
// the metrics listener), so that no request is ever proxied to it.
func (p *Proxy) ProtectListener(addr net.Addr) { p.dialer.addOwn(addr) }

// Ready reports whether the proxy has a policy and is serving.
func (p *Proxy) Ready() bool { return p.ready.Load() && p.policy.Load() != nil }

// Listen opens the proxy's TCP listener on addr. Accepted connections get no TCP
// keep-alive (Go's default costs four setsockopt calls per connection): a client
// connection that goes quiet is closed by Options.IdleTimeout instead.
func Listen(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(context.Background(), "tcp", addr)
}

// Serve accepts connections on ln until Shutdown. It returns http.ErrServerClosed
// after a shutdown.
func (p *Proxy) Serve(ln net.Listener) error {
	if p.policy.Load() == nil {
		return errors.New("proxy: Serve called before SetPolicy")
	}
	p.dialer.addOwn(ln.Addr())
	stop := p.tunnels.sweepIdle(p.opts.IdleTimeout, p.metrics, p.log)
	defer stop()
	stopPrune := every(min(max(p.opts.IdleTimeout/2, 10*time.Millisecond), 30*time.Second), p.upstreams.prune)
	defer stopPrune()
	p.ready.Store(true)
	defer p.ready.Store(false)
	return p.srv.Serve(ln)
}

// every runs f every d on a goroutine of its own until the returned stop is called.
func every(d time.Duration, f func()) (stop func()) {
	tick := time.NewTicker(d)
	done := make(chan struct{})
	go func() {
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				f()
			}
		}
	}()
	return func() { close(done) }
}

// Shutdown stops accepting, lets requests and tunnels in flight finish until ctx is
// done, then closes what is left.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.ready.Store(false)
	err := p.srv.Shutdown(ctx)
	// Hijacked tunnels are not the server's to wait for; they are ours.
	p.waitTunnels(ctx)
	if n := p.tunnels.closeAll(closeShutdown); n > 0 {
		p.log.Info("tunnels closed at shutdown", "tunnels", n)
		// Closed connections end their copiers at once; let them write their
		// access log lines before the process goes.
		closing, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		p.waitTunnels(closing)
		cancel()
	}
	p.gp.Tr.CloseIdleConnections()
	p.upstreams.close()
	if errors.Is(err, context.DeadlineExceeded) {
		p.srv.Close()
		return nil
	}
	return err
}

// waitTunnels waits until every tunnel has ended and logged, or ctx is done.
func (p *Proxy) waitTunnels(ctx context.Context) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for p.tunnelsLive.Load() > 0 && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

// trackConn counts client connections for MaxConnections. A hijacked connection
// (a tunnel) stays counted until its tunnel ends.
func (p *Proxy) trackConn(_ net.Conn, state http.ConnState) {
	switch state {
	case http.StateNew:
		p.conns.Add(1)
	case http.StateClosed:
		p.conns.Add(-1)
	}
}

// ServeHTTP is the proxy's entry point for every request on its listener.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect && !r.URL.IsAbs() {
		p.opts.LocalHandler.ServeHTTP(w, r)
		return
	}
	if strings.EqualFold(strings.TrimSuffix(r.URL.Hostname(), "."), LocalHost) {
		p.serveLocal(w, r)
		return
	}
	ex := &exchange{start: p.opts.Now(), client: r.RemoteAddr, method: r.Method}
	if p.conns.Load() > int64(p.opts.MaxConnections) {
		w.Header().Set("Connection", "close")
		http.Error(w, "egressd: too many connections; try again later", http.StatusServiceUnavailable)
		ex.status = http.StatusServiceUnavailable
		ex.reason = "too many connections"
		p.accessLog(ex)
		return
	}
	rec := &recorder{ResponseWriter: w}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &countingBody{ReadCloser: r.Body, n: &ex.up}
	}
	r = r.WithContext(context.WithValue(r.Context(), exchangeKey{}, ex))
	p.gp.ServeHTTP(rec, r)
	if ex.detached {
		return // a tunnel: it logs and releases its connection slot when it ends
	}
	if rec.hijacked {
		p.conns.Add(-1) // the server reports no StateClosed for a hijacked connection
	}
	if ex.status == 0 {
		ex.status = rec.status
	}
	p.count(ex)
	if ex.kind == kindHTTP {
		ex.down = rec.bytes
		p.metrics.durationBy[kindHTTP].Observe(p.opts.Now().Sub(ex.start).Seconds())
	}
	p.accessLog(ex)
}

// finishDetached ends an exchange that left its HTTP handler: a tunnel.
func (p *Proxy) finishDetached(ex *exchange) {
	p.conns.Add(-1) // a hijacked connection gets no StateClosed from the server
	p.accessLog(ex)
}

// LocalHost is the reserved host name through which a function whose HTTP client
// always uses the proxy reaches egressd's own endpoints: http://egressd.internal/...
// It is never resolved and never forwarded.
const LocalHost = "egressd.internal"

// serveLocal answers a request for LocalHost with the local handler, as if it had come
// in origin form.
func (p *Proxy) serveLocal(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodConnect || r.URL.Scheme != "http" {
		http.Error(w, "egressd: "+LocalHost+" speaks plain HTTP through the proxy: use http://"+LocalHost+"/...", http.StatusBadRequest)
		return
	}
	r2 := r.Clone(r.Context())
	r2.URL = &url.URL{Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery}
	r2.RequestURI = r2.URL.RequestURI()
	r2.Host = LocalHost
	removeHopByHop(r2.Header)
	p.opts.LocalHandler.ServeHTTP(w, r2)
}

// exchange is what the access log says about one request or tunnel. It travels in
// the request's context through goproxy's handlers.
type exchange struct {
	start    time.Time
	client   string
	method   string
	kind     string
	target   string
	decision string // allow, deny, report
	rule     *policy.Rule
	reason   string
	hint     string // for a denial
	status   int
	up, down int64
	closedBy string // for tunnels: done, idle, revoked, shutdown
	// closeAfter closes the client connection after the response: the request's
	// framing was ambiguous.
	closeAfter bool
	// detached is set when a tunnel takes the exchange over from its HTTP handler.
	detached bool
	counted  bool // added to egressd_requests_total
}

type exchangeKey struct{}

func exchangeOf(r *http.Request) *exchange {
	if ex, ok := r.Context().Value(exchangeKey{}).(*exchange); ok {
		return ex
	}
	return &exchange{}
}

// decide asks the policy about host:port and records the outcome in ex and the
// metrics. It returns whether the request may proceed (allowed, or report mode).
func (p *Proxy) decide(ex *exchange, kind, host string, port uint16) (policy.Decision, bool) {
	d := p.policy.Load().Decide(host, port)
	ex.kind, ex.target, ex.rule, ex.reason = kind, d.Target(), d.Rule, string(d.Reason)
	switch {
	case d.Allow:
		ex.decision = decisionAllow
	case p.opts.Report:
		ex.decision, ex.hint = decisionReport, d.Hint()
	default:
		ex.decision, ex.hint = decisionDeny, d.Hint()
	}
	return d, ex.decision != decisionDeny
}

// count adds ex to egressd_requests_total once its decision is final: the guard and
// loop checks at dial time can still turn an allowed target into a denial.
func (p *Proxy) count(ex *exchange) {
	if ex.kind != "" && !ex.counted {
		ex.counted = true
		p.metrics.requestsBy[ex.kind][ex.decision].Inc()
	}
}

// failure is the answer to a client whose allowed target could not be reached, or
// was refused at dial time (a loop, a guarded address). It records the outcome in
// ex and the metrics and returns the status, the X-Egressd-Denied value for a
// refusal, and the body.
func (p *Proxy) failure(ex *exchange, err error) (status int, denied, body string) {
	var de *dialError
	if !errors.As(err, &de) {
		// Not from the dialer: the connection was made, the answer failed.
		de = &dialError{status: http.StatusBadGateway, reason: "other", target: ex.target, err: err, answer: true}
	}
	ex.status, ex.reason = de.status, de.reason
	if de.refused() {
		ex.decision, ex.hint = decisionDeny, de.hint()
		return de.status, de.reason, fmt.Sprintf("egressd: denied %s: %s; hint: %s\n", de.target, de.reason, de.hint())
	}
	p.metrics.upstreamErrors.WithLabelValues(de.reason).Inc()
	return de.status, "", "egressd: " + de.Error() + "\n"
}

// accessLog writes the one line each request or tunnel gets.
func (p *Proxy) accessLog(ex *exchange) {
	attrs := []slog.Attr{
		slog.String("client", ex.client),
		slog.String("method", ex.method),
		slog.String("target", ex.target),
		slog.String("decision", ex.decision),
		slog.String("reason", ex.reason),
		slog.Int("status", ex.status),
		slog.Int64("bytes_up", ex.up),
		slog.Int64("bytes_down", ex.down),
		slog.Float64("duration_seconds", p.opts.Now().Sub(ex.start).Seconds()),
	}
	if ex.rule != nil {
		attrs = append(attrs, slog.String("rule", ex.rule.Text), slog.String("rule_at", ex.rule.Location()))
	}
	if ex.hint != "" {
		attrs = append(attrs, slog.String("hint", ex.hint))
		if p.opts.Denials != nil && ex.target != "" {
			client, _, err := net.SplitHostPort(ex.client)
			if err != nil {
				client = ex.client
			}
			p.opts.Denials.Record(ex.target, ex.reason, ex.hint, client, ex.decision == decisionReport, ex.start)
		}
	}
	if ex.closedBy != "" {
		attrs = append(attrs, slog.String("closed", ex.closedBy))
	}
	p.log.LogAttrs(context.Background(), slog.LevelInfo, "request", attrs...)
}

// denyText is the body of a 403: one line a person can act on.
func denyText(d policy.Decision) string {
	return fmt.Sprintf("egressd: denied %s: %s; hint: %s\n", d.Target(), d.Reason, d.Hint())
}

// headerDenied carries the reason of a denial, for programs.
const headerDenied = "X-Egressd-Denied"

// recorder remembers the status and body size of a response. Its Hijack keeps bytes
// that the client sent early (a pipelined TLS ClientHello after CONNECT), which
// goproxy's ConnectHijack would otherwise drop.
type recorder struct {
	http.ResponseWriter
	status   int
	bytes    int64
	hijacked bool
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

// ReadFrom lets io.Copy of an upstream body use net/http's pooled copy buffer; without
// it each answer would allocate a fresh 32 KiB buffer, which under load is most of
// what the garbage collector has to do.
func (r *recorder) ReadFrom(src io.Reader) (int64, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	rf, ok := r.ResponseWriter.(io.ReaderFrom)
	if !ok {
		return io.Copy(struct{ io.Writer }{r}, src) // struct: not this ReadFrom again
	}
	n, err := rf.ReadFrom(src)
	r.bytes += n
	return n, err
}

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(r.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	r.hijacked = true
	if n := rw.Reader.Buffered(); n > 0 {
		early := make([]byte, n)
		if _, err := io.ReadFull(rw.Reader, early); err != nil {
			c.Close()
			return nil, nil, err
		}
		c = &earlyConn{Conn: c, early: early}
	}
	return c, rw, nil
}

// earlyConn is a hijacked client connection with bytes the server had already read.
type earlyConn struct {
	net.Conn
	early []byte
}

// countingBody counts the request body bytes sent upstream.
type countingBody struct {
	io.ReadCloser
	n *int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	*b.n += int64(n)
	return n, err
}

// goproxyLogger sends goproxy's own messages to the debug log.
type goproxyLogger struct{ log *slog.Logger }

func (l goproxyLogger) Printf(format string, v ...any) {
	l.log.Debug("goproxy", "msg", fmt.Sprintf(format, v...))
}
