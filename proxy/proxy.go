package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/egressd/egressd/internal/defaults"
	"github.com/egressd/egressd/originate"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/egressd/egressd/dialer"
	"github.com/egressd/egressd/guard"
	"github.com/egressd/egressd/policy"
)

// Options configure a Proxy. Zero values are documented per field.
type Options struct {
	// Report lets denied requests through, logging and counting them as "report".
	Report bool
	// IdleTimeout closes keep-alive connections and tunnels with no bytes in either
	// direction after this long. If zero, 5m.
	IdleTimeout time.Duration
	// ReadHeaderTimeout bounds reading request headers. If zero, 10s.
	ReadHeaderTimeout time.Duration
	// MaxHeaderBytes bounds request headers. If zero, 64 KiB.
	MaxHeaderBytes int
	// MaxResponseHeaderBytes bounds an origin's answer headers, each interim (1xx)
	// answer's and the final one's; past it the client gets 502. If zero, 1 MiB.
	MaxResponseHeaderBytes int64
	// ResponseHeaderTimeout bounds the wait for an origin's answer headers once the
	// request has been sent; past it the client gets 504. If zero, 60s.
	ResponseHeaderTimeout time.Duration
	// MaxConnections bounds concurrent client connections, tunnels included; past it
	// a request gets 503. If zero, 4096.
	MaxConnections int
	// HalfCloseTimeout closes a tunnel whose one direction has ended (the client sent
	// its FIN) while the other goes on for this long. If zero, 30s.
	HalfCloseTimeout time.Duration
	// FileLimit is the process's file-descriptor limit, which bounds what the proxy
	// accepts: each proxied connection holds two descriptors, and a reserve stays free
	// for the metrics, health and admin listeners. If zero, RLIMIT_NOFILE.
	FileLimit int
	// CloseRevokedTunnels closes an open tunnel when SetPolicy installs a policy that
	// no longer allows its target.
	CloseRevokedTunnels bool
	// TransparentVerifyDestination refuses an intercepted connection whose original
	// address is not among its name's addresses, instead of dialling the name's own.
	TransparentVerifyDestination bool
	// Dialer resolves, checks and connects to upstreams. If nil, a dialer.Dialer with
	// the system resolver, the guard, the IP and CIDR rules of the policy in force as
	// exemptions, and a 10s timeout.
	Dialer *dialer.Dialer
	// UpstreamTLS is the TLS configuration for requests in absolute form to https://
	// URLs of hosts with no upstreams entry. If nil, the system roots verify the origin.
	UpstreamTLS *tls.Config
	// Originator makes the TLS connections and injected headers of hosts with an
	// upstreams entry (SetUpstreams). If nil, no host has one.
	Originator *originate.Originator
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
	// ReturnMemory gives memory back to the system after a burst of connections has
	// closed (see returnMemory). If nil, debug.FreeOSMemory.
	ReturnMemory func()
}

// DenialRecorder notes denied targets; *diag.Denials is one.
type DenialRecorder interface {
	Record(target, reason, hint, rule, client string, reportOnly bool, at time.Time)
}

// Proxy is the forward proxy. Create it with New, give it a policy with SetPolicy,
// then Serve a listener.
type Proxy struct {
	opts      Options
	log       *slog.Logger
	metrics   *metrics
	policy    atomic.Pointer[policy.Matcher]
	origins   atomic.Pointer[originate.Table] // the upstreams entries in force
	dialer    *dialer.Dialer
	gp        http.Handler // goproxy, as newGoproxy configures it
	upstreams *upstreams   // the one HTTP client for plain-HTTP requests
	srv       *http.Server
	tunnels   *tunnelSet
	plain     plainConns   // connections served by plain.go's loop
	conns     atomic.Int64 // client connections open, tunnels and upgrades included
	// maxOpen is the client connections the file-descriptor budget allows; past it
	// the listener stops accepting until one closes.
	maxOpen int64
	// acceptWarned is when an accept problem was last logged (UnixNano): at most
	// one line a second.
	acceptWarned atomic.Int64
	// tunnelsLive counts tunnels from their start until their access log line is
	// written, and reading the connections the accept loop has taken and not yet
	// handed to a tunnel or to net/http: what a shutdown waits for.
	tunnelsLive atomic.Int64
	reading     atomic.Int64
	workers     *workers // the goroutines that set tunnels up
	// pollers move the bytes of tunnels that carry small pieces; started with the
	// first tunnel (pollersOnce), stopped at shutdown.
	pollers     []*poller
	pollersOnce sync.Once
	nextPolled  atomic.Uint32
	ready       atomic.Bool
	// peakConns is the most client connections open at once since memory was last
	// returned after a burst (see returnMemory).
	peakConns atomic.Int64
	// memoryCheck is returnMemory's period; tests shorten it.
	memoryCheck time.Duration
	mu          sync.Mutex
	transparent []net.Listener // closed by Shutdown
}

// New returns a Proxy. It starts nothing: no listener, no goroutine.
func New(opts Options) (*Proxy, error) {
	setDefault(&opts.IdleTimeout, defaults.IdleTimeout)
	setDefault(&opts.ReadHeaderTimeout, defaults.ReadHeaderTimeout)
	setDefault(&opts.MaxHeaderBytes, defaults.MaxHeaderBytes)
	setDefault(&opts.MaxResponseHeaderBytes, defaults.MaxResponseHeaderBytes)
	setDefault(&opts.ResponseHeaderTimeout, defaults.ResponseHeaderTimeout)
	setDefault(&opts.MaxConnections, defaults.MaxConnections)
	setDefault(&opts.HalfCloseTimeout, defaults.HalfCloseTimeout)
	if opts.FileLimit == 0 {
		opts.FileLimit = fileLimit()
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
	if opts.ReturnMemory == nil {
		opts.ReturnMemory = debug.FreeOSMemory
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("registering proxy metrics: %w", err)
	}
	p := &Proxy{
		opts:    opts,
		log:     opts.Logger,
		metrics: m,
		dialer:  opts.Dialer,
		tunnels: newTunnelSet(),

		memoryCheck: 5 * time.Second,
	}
	p.workers = newWorkers(p.runJob)
	p.pollers = newPollers(runtime.GOMAXPROCS(0))
	if p.dialer == nil {
		// Exempt from the guard what the policy in force covers, as it is at each dial.
		p.dialer = dialer.New(dialer.Options{
			Exempt: guard.ExemptFunc(func(a netip.Addr) bool { return p.policy.Load().Exempt(a) }),
		})
	}
	budget := max(opts.FileLimit-fdReserve, 32)
	p.maxOpen = int64(budget / 2)
	if int64(opts.MaxConnections) > p.maxOpen {
		opts.Logger.Warn("the file-descriptor limit holds the proxy to fewer connections than proxy.max_connections; raise it (ulimit -n) for more",
			"file_limit", opts.FileLimit, "max_connections", opts.MaxConnections, "connections", p.maxOpen)
	}
	p.upstreams = &upstreams{
		dial:           p.dialer.Dial,
		tlsConfig:      opts.UpstreamTLS,
		idleTimeout:    opts.IdleTimeout,
		headerTimeout:  opts.ResponseHeaderTimeout,
		maxHeaderBytes: opts.MaxResponseHeaderBytes,
		expectTimeout:  time.Second,
		maxIdle:        256,
		maxIdleAll:     min(1024, budget/4),
		now:            opts.Now,
	}
	p.gp = p.newGoproxy()
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

// SetPolicy installs m for every request decided from now on. Requests in flight
// keep the decision they had; open tunnels that m no longer allows are closed when
// Options.CloseRevokedTunnels is set.
func (p *Proxy) SetPolicy(m *policy.Matcher) {
	p.policy.Store(m)
	if p.opts.CloseRevokedTunnels && !p.opts.Report {
		p.tunnels.revoke(m, p.log)
	}
}

// SetUpstreams installs the upstreams entries for every request decided from now on.
func (p *Proxy) SetUpstreams(t *originate.Table) { p.origins.Store(t) }

// Upstreams returns the upstreams entries in force, or nil.
func (p *Proxy) Upstreams() *originate.Table { return p.origins.Load() }

// Policy returns the policy in force, or nil before the first SetPolicy.
func (p *Proxy) Policy() *policy.Matcher { return p.policy.Load() }

// ProtectListener records the address of another listener of this process (such as
// the metrics listener), so that no request is ever proxied to it.
func (p *Proxy) ProtectListener(addr net.Addr) { p.dialer.AddOwn(addr) }

// Ready reports whether the proxy has a policy and is serving.
func (p *Proxy) Ready() bool { return p.ready.Load() && p.policy.Load() != nil }

// Listen opens the proxy's TCP listener on addr. Accepted connections get no TCP
// keep-alive (Go's default costs four setsockopt calls per connection): a client
// connection that goes quiet is closed by Options.IdleTimeout instead.
//
// A proxy client speaks first, so the kernel is asked to hand over a connection
// only once its first bytes have come (TCP_DEFER_ACCEPT, see deferAccept):
// the first read of every connection then finds its request instead of waiting for
// it, and a connection that sends nothing takes no descriptor of egressd's for the
// first seconds (the kernel hands it over after the defer period, about 11 s).
func Listen(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1, Control: deferAccept}
	return lc.Listen(context.Background(), "tcp", addr)
}

// ListenTransparent opens a transparent listener on addr: as Listen, but without
// TCP_DEFER_ACCEPT, since an intercepted protocol may wait for the server to speak
// first (SSH does).
func ListenTransparent(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(context.Background(), "tcp", addr)
}

// Serve accepts connections on ln until Shutdown. It returns http.ErrServerClosed
// after a shutdown.
func (p *Proxy) Serve(ln net.Listener) error {
	if p.policy.Load() == nil {
		return errors.New("proxy: Serve called before SetPolicy")
	}
	p.dialer.AddOwn(ln.Addr())
	limited := &acceptLimiter{Listener: ln, p: p}
	stop := p.tunnels.sweep(p.opts.IdleTimeout, p.opts.HalfCloseTimeout, p.metrics, p.log)
	defer stop()
	stopPrune := every(min(max(p.opts.IdleTimeout/2, 10*time.Millisecond), 30*time.Second), p.upstreams.prune)
	defer stopPrune()
	stopReturn := every(p.memoryCheck, func() {
		p.workers.retire()
		p.returnMemory()
	})
	defer stopReturn()
	p.ready.Store(true)
	defer p.ready.Store(false)
	h := newHandoff(limited)
	go p.serveConns(p.acceptConn(limited), h)
	return p.srv.Serve(h)
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
	p.mu.Lock()
	for _, ln := range p.transparent {
		ln.Close()
	}
	p.mu.Unlock()
	plainDone := make(chan struct{})
	go func() {
		p.plain.shutdown(ctx)
		close(plainDone)
	}()
	err := p.srv.Shutdown(ctx)
	<-plainDone
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
	p.stopPollers()
	p.upstreams.close()
	if errors.Is(err, context.DeadlineExceeded) {
		p.srv.Close()
		return nil
	}
	return err
}

// nextPoller returns the poller for the next tunnel, in turn, or nil if there are
// none.
func (p *Proxy) nextPoller() *poller {
	if len(p.pollers) == 0 {
		return nil
	}
	p.pollersOnce.Do(func() {
		for _, pl := range p.pollers {
			go pl.run()
		}
	})
	return p.pollers[p.nextPolled.Add(1)%uint32(len(p.pollers))]
}

// stopPollers ends the pollers' goroutines, once their tunnels are closed.
func (p *Proxy) stopPollers() {
	p.pollersOnce.Do(func() {}) // none started later
	for _, pl := range p.pollers {
		pl.stop()
	}
}

// close ends serving at once, for tests: no drain.
func (p *Proxy) close() {
	p.mu.Lock()
	for _, ln := range p.transparent {
		ln.Close()
	}
	p.mu.Unlock()
	p.srv.Close()
	p.plain.closeAll()
	p.tunnels.closeAll(closeShutdown)
	p.stopPollers()
	p.upstreams.close()
}

// waitTunnels waits until every tunnel has ended and logged, or ctx is done.
func (p *Proxy) waitTunnels(ctx context.Context) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for p.tunnelsLive.Load()+p.reading.Load() > 0 && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

// trackConn counts client connections for MaxConnections. A hijacked connection is
// no longer the server's: a tunnel or an upgrade that goes on with it takes a slot of
// its own (acquireSlot) until it ends.
func (p *Proxy) trackConn(_ net.Conn, state http.ConnState) {
	switch state {
	case http.StateNew:
		p.notePeak(p.conns.Add(1))
	case http.StateClosed, http.StateHijacked:
		p.conns.Add(-1)
	}
}

// fdReserve is the file descriptors kept out of the proxy's budget: the metrics,
// health and admin listeners and their clients, the DNS sockets, the log, the files.
const fdReserve = 64

// fileLimit is the process's soft RLIMIT_NOFILE, or a large number if unknown.
func fileLimit() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<20 {
		return 1 << 20
	}
	return int(rl.Cur)
}

// acceptLimiter is the proxy's listener: it accepts only while the file-descriptor
// budget has room, so that running out of descriptors stops new proxy connections
// (they wait in the kernel's backlog) and never /healthz or /metrics; and it counts
// and logs accept failures, which net/http would only retry.
type acceptLimiter struct {
	net.Listener
	p      *Proxy
	closed atomic.Bool
	mu     sync.Mutex
	dup    *os.File // a duplicate of the listener's descriptor, for acceptSocket
}

func (l *acceptLimiter) Accept() (net.Conn, error) {
	l.awaitBudget()
	c, err := l.Listener.Accept()
	l.noteError(err)
	return c, err
}

// awaitBudget waits while the file-descriptor budget is spent.
func (l *acceptLimiter) awaitBudget() {
	for l.p.conns.Load() >= l.p.maxOpen && !l.closed.Load() {
		l.p.warnAccept("proxy at its file-descriptor budget; new connections wait until one closes",
			"connections", l.p.conns.Load(), "file_limit", l.p.opts.FileLimit)
		time.Sleep(5 * time.Millisecond)
	}
}

// noteError counts and logs an accept error, other than the listener's close.
func (l *acceptLimiter) noteError(err error) {
	if err != nil && !l.closed.Load() && !errors.Is(err, net.ErrClosed) {
		l.p.metrics.acceptErrors.Inc()
		l.p.warnAccept("proxy listener cannot accept", "error", err.Error(), "connections", l.p.conns.Load())
	}
}

func (l *acceptLimiter) Close() error {
	l.closed.Store(true)
	l.mu.Lock()
	if l.dup != nil {
		l.dup.Close()
	}
	l.mu.Unlock()
	return l.Listener.Close()
}

// duplicate returns the RawConn of a duplicate of tl's descriptor, closed with l.
func (l *acceptLimiter) duplicate(tl *net.TCPListener) (syscall.RawConn, error) {
	f, err := tl.File()
	if err != nil {
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed.Load() {
		f.Close()
		return nil, net.ErrClosed
	}
	l.dup = f
	return rc, nil
}

// warnAccept logs at most once a second.
func (p *Proxy) warnAccept(msg string, args ...any) {
	now := time.Now().UnixNano()
	last := p.acceptWarned.Load()
	if now-last < int64(time.Second) || !p.acceptWarned.CompareAndSwap(last, now) {
		return
	}
	p.log.Warn(msg, args...)
}

// connSlot is a client connection counted against MaxConnections by something other
// than the HTTP server. It can be released once only.
type connSlot struct {
	n        *atomic.Int64
	released atomic.Bool
}

func (p *Proxy) acquireSlot() *connSlot {
	p.notePeak(p.conns.Add(1))
	return &connSlot{n: &p.conns}
}

// notePeak raises peakConns to n. Two connections opening at once may both miss
// the other's count: the peak is a rough one, and that is all returnMemory needs.
func (p *Proxy) notePeak(n int64) {
	if n > p.peakConns.Load() {
		p.peakConns.Store(n)
	}
}

// burstConns is the peak of open connections past which their closing is a burst
// whose memory is worth returning.
const burstConns = 256

// returnMemory gives the system back the memory of a burst of connections once it
// has passed. Their goroutine stacks, buffers and state go back to the Go heap when
// they close, but the runtime returns heap memory to the system only after a garbage
// collection has found it free, and an idle proxy allocates nothing that would start
// one: after a burst of 5 000 tunnels the resident set stayed at its peak (69 MB
// after a 19 MB start). When the open connections have fallen to half of a peak of
// at least burstConns, it asks the runtime, once, to collect and return what is
// free (debug.FreeOSMemory: a few milliseconds of CPU with a small heap).
func (p *Proxy) returnMemory() {
	peak, open := p.peakConns.Load(), p.conns.Load()
	if peak < burstConns || open > peak/2 {
		return
	}
	p.peakConns.Store(open)
	start := time.Now()
	p.opts.ReturnMemory()
	p.log.Info("memory of a burst of connections returned", "peak_connections", peak, "connections", open, "took", time.Since(start).Round(time.Microsecond).String())
}

func (s *connSlot) release() {
	if s != nil && s.released.CompareAndSwap(false, true) {
		s.n.Add(-1)
	}
}
