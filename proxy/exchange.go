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
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egressd/egressd/dialer"
	"github.com/egressd/egressd/originate"
	"github.com/egressd/egressd/policy"
)

// exchange is one request or tunnel, from its decision to its access log line. It
// travels in goproxy's ProxyCtx.UserData. It is answered once (the client has its
// status: requests and duration metrics) and finished once (the access log line,
// the denial record, the connection slot), by answered and finish alone.
type exchange struct {
	p        *Proxy
	start    time.Time
	client   string
	method   string
	kind     string
	target   string
	host     string // decided: the normalized host
	port     uint16
	decision string // allow, deny, report
	rule     *policy.Rule
	reason   string
	hint     string // for a denial
	status   int
	// Bytes each way: a request body is sent by a goroutine of its own, and an
	// upgraded connection's copiers can outlive the handler that finishes ex.
	up, down atomic.Int64
	closedBy string // for tunnels: done, idle, revoked, shutdown
	// closeAfter closes the client connection after the response: the request's
	// framing was ambiguous.
	closeAfter bool
	// upgrade is set for a request that asks for a protocol upgrade (websocket).
	upgrade bool
	// origin is the upstreams entry whose TLS egressd makes, if any; injected are
	// the headers it set (names only: the access log never has a value).
	origin   *originate.Entry
	injected []string
	// slot counts a hijacked connection (a tunnel, an upgrade) against MaxConnections.
	slot       *connSlot
	suggest    string // the rule that would allow a denied target, if one can
	answerOnce sync.Once
	denialOnce sync.Once
	finished   atomic.Bool
}

func (p *Proxy) newExchange(kind string, r *http.Request) *exchange {
	return &exchange{p: p, start: p.opts.Now(), client: r.RemoteAddr, method: r.Method, kind: kind}
}

// decide asks the policy about host:port and records the outcome. It returns whether
// the request may proceed (allowed, or report mode).
func (ex *exchange) decide(host string, port uint16) (policy.Decision, bool) {
	d := ex.p.policy.Load().Decide(host, port)
	ex.target, ex.host, ex.port, ex.rule, ex.reason = d.Target(), d.Host, d.Port, d.Rule, string(d.Reason)
	switch {
	case d.Allow:
		ex.decision = decisionAllow
	case ex.p.opts.Report:
		ex.decision, ex.hint = decisionReport, d.Hint()
	default:
		ex.decision, ex.hint = decisionDeny, d.Hint()
	}
	if !d.Allow && (d.Reason == policy.ReasonNotListed || d.Reason == policy.ReasonPort || d.Reason == policy.ReasonIPNotListed) {
		ex.suggest = d.SuggestedRule()
	}
	return d, ex.decision != decisionDeny
}

// answered records, once, that the client has its answer's status: the request
// counts with its final decision, and its duration so far is observed (for a
// tunnel, the time until it is up or refused).
func (ex *exchange) answered() {
	ex.answerOnce.Do(func() {
		if ex.kind == "" {
			return // refused before it was looked at (too many connections)
		}
		m := ex.p.metrics
		m.requestsBy[ex.kind][ex.decision].Inc()
		m.durationBy[ex.kind].Observe(ex.p.opts.Now().Sub(ex.start).Seconds())
	})
}

// finish ends the exchange, once: the metrics if not yet recorded, the access log
// line, the denial record, and the connection slot.
func (ex *exchange) finish() {
	if !ex.finished.CompareAndSwap(false, true) {
		return
	}
	ex.answered()
	ex.slot.release()
	p := ex.p
	// Room for every attribute, so that no append below grows the slice on the heap.
	attrs := make([]slog.Attr, 0, 16)
	attrs = append(attrs,
		slog.String("client", ex.client),
		slog.String("method", ex.method),
		slog.String("target", ex.target),
		slog.String("decision", ex.decision),
		slog.String("reason", ex.reason),
		slog.Int("status", ex.status),
		slog.Int64("bytes_up", ex.up.Load()),
		slog.Int64("bytes_down", ex.down.Load()),
		slog.Float64("duration_seconds", p.opts.Now().Sub(ex.start).Seconds()),
	)
	if ex.rule != nil {
		attrs = append(attrs, slog.String("rule", ex.rule.Text), slog.String("rule_at", ex.rule.Location()))
	}
	if ex.hint != "" {
		attrs = append(attrs, slog.String("hint", ex.hint))
		ex.recordDenial()
	}
	if ex.closedBy != "" {
		attrs = append(attrs, slog.String("closed", ex.closedBy))
	}
	if ex.origin != nil {
		mode := "tls"
		if ex.origin.MutualTLS() {
			mode = "mtls"
		}
		attrs = append(attrs, slog.String("originated", mode))
		if len(ex.injected) > 0 {
			attrs = append(attrs, slog.String("injected", strings.Join(ex.injected, ",")))
		}
	}
	// The handler itself, not Logger.LogAttrs: a Logger unwinds the stack for its
	// caller's program counter on every line, which the access log never shows.
	if h := p.log.Handler(); h.Enabled(context.Background(), slog.LevelInfo) {
		r := slog.NewRecord(time.Now(), slog.LevelInfo, "request", 0)
		r.AddAttrs(attrs...)
		h.Handle(context.Background(), r)
	}
}

// recordDenial puts the exchange in the table of recent denials, once: before the
// 403 is written (deny), so that a client that has its answer finds it there, or
// at the end (report mode, refusals after the decision).
func (ex *exchange) recordDenial() {
	p := ex.p
	if p.opts.Denials == nil || ex.target == "" || ex.hint == "" {
		return
	}
	ex.denialOnce.Do(func() {
		client, _, err := net.SplitHostPort(ex.client)
		if err != nil {
			client = ex.client
		}
		p.opts.Denials.Record(ex.target, ex.reason, ex.hint, ex.suggest, client, ex.decision == decisionReport, ex.start)
	})
}

// headerDenied carries the reason of a denial, for programs.
const headerDenied = "X-Egressd-Denied"

// deny is the 403 for a target the policy denies.
func (ex *exchange) deny(r *http.Request, d policy.Decision) *http.Response {
	body := fmt.Sprintf("egressd: denied %s: %s; hint: %s\n", d.Target(), d.Reason, d.Hint())
	resp := ex.own(r, http.StatusForbidden, "Forbidden by egressd: "+string(d.Reason), body)
	resp.Header.Set(headerDenied, string(d.Reason))
	// Counted and recorded before the client has its 403: whoever it tells finds
	// the denial in the metrics and the table.
	ex.answered()
	ex.recordDenial()
	return resp
}

// badRequest is the 400 for a target that cannot be decided.
func (ex *exchange) badRequest(r *http.Request, err error) *http.Response {
	ex.decision, ex.reason = decisionDeny, "bad request"
	return ex.own(r, http.StatusBadRequest, "", "egressd: "+err.Error()+"\n")
}

// Errors of the upstream client that the client's answer names.
var (
	errHeaderTooLarge = errors.New("answer headers too large")
	errHeaderTimeout  = errors.New("no answer in time")
)

// failure is the answer to a client whose allowed target could not be reached, was
// refused at dial time (a loop, a guarded address), or gave no valid answer.
func (ex *exchange) failure(r *http.Request, err error) *http.Response {
	var (
		status       int
		phrase, body string
		de           *dialer.Error
		oe           *originate.Error
		he           *handshakeError
	)
	switch {
	case errors.As(err, &de) && de.Refused():
		ex.decision, ex.reason, ex.hint = decisionDeny, de.Reason, de.Hint()
		body = fmt.Sprintf("egressd: denied %s: %s; hint: %s\n", de.Target, de.Reason, de.Hint())
		resp := ex.own(r, http.StatusForbidden, "Forbidden by egressd: "+de.Reason, body)
		resp.Header.Set(headerDenied, de.Reason)
		return ex.closeIfUpgrade(resp)
	case errors.As(err, &de):
		status, ex.reason = de.Status, de.Reason
		phrase, body = failurePhrase(de), "egressd: "+de.Error()+"\n"
	case errors.As(err, &oe):
		status, ex.reason = http.StatusBadGateway, "other"
		phrase = "egressd cannot originate TLS to " + ex.target
		body = fmt.Sprintf("egressd: TLS to %s: %s\n", ex.target, oe.Msg)
	case errors.As(err, &he):
		status, ex.reason = http.StatusBadGateway, "other"
		phrase = "egressd: TLS to " + ex.target + " failed"
		body = fmt.Sprintf("egressd: TLS to %s failed: %s\n", ex.target, originate.Explain(he.err))
	case errors.Is(err, errHeaderTooLarge):
		status, ex.reason = http.StatusBadGateway, "other"
		phrase = "egressd: answer headers from " + ex.target + " too large"
		body = fmt.Sprintf("egressd: answer headers too large from %s (more than %d bytes)\n", ex.target, ex.p.opts.MaxResponseHeaderBytes)
	case errors.Is(err, errHeaderTimeout):
		status, ex.reason = http.StatusGatewayTimeout, "timeout"
		phrase = "egressd: no answer from " + ex.target + " in time"
		body = fmt.Sprintf("egressd: %s did not answer within %s\n", ex.target, ex.p.opts.ResponseHeaderTimeout)
	case ex.origin != nil && strings.Contains(err.Error(), "remote error: tls:"):
		// TLS 1.3: the server's refusal of our certificate comes with its answer.
		status, ex.reason = http.StatusBadGateway, "other"
		phrase = "egressd: TLS to " + ex.target + " failed"
		body = fmt.Sprintf("egressd: TLS to %s failed: %s\n", ex.target, originate.Explain(err))
	default:
		status, ex.reason = http.StatusBadGateway, "other"
		phrase = "egressd: no valid answer from " + ex.target
		body = fmt.Sprintf("egressd: no valid answer from %s: %v\n", ex.target, err)
	}
	ex.p.metrics.upstreamErrors.WithLabelValues(ex.reason).Inc()
	return ex.closeIfUpgrade(ex.own(r, status, http.StatusText(status)+": "+phrase, body))
}

// failurePhrase is the short reason phrase for a failure to connect.
func failurePhrase(de *dialer.Error) string {
	switch de.Reason {
	case "dns":
		return "egressd cannot resolve " + de.Target
	case "timeout":
		return "egressd timed out connecting to " + de.Target
	case "refused":
		return "egressd: connection to " + de.Target + " refused"
	}
	return "egressd cannot connect to " + de.Target
}

// closeIfUpgrade ends the client connection after a failed upgrade: the client may
// already be sending the new protocol.
func (ex *exchange) closeIfUpgrade(resp *http.Response) *http.Response {
	if ex.upgrade {
		resp.Header.Set("Connection", "close")
	}
	return resp
}

// own is an answer of egressd's own: text, bound to ex. A reason phrase, if given,
// replaces the standard one; the answer is then written on the raw connection,
// which is closed after it (net/http cannot write a reason phrase of its own).
func (ex *exchange) own(r *http.Request, status int, phrase, body string) *http.Response {
	resp := textResponse(r, status, body)
	ex.status = status
	resp.Body = &answer{ex: ex, body: resp.Body, phrase: reasonPhrase(phrase), text: body, head: r.Method == http.MethodHead}
	return resp
}

// reasonPhrase makes s safe for a status line: printable ASCII, at most 160 bytes.
func reasonPhrase(s string) string {
	if s == "" {
		return ""
	}
	b := make([]byte, 0, min(len(s), 160))
	for i := 0; i < len(s) && len(b) < 160; i++ {
		if c := s[i]; c >= 0x20 && c < 0x7f {
			b = append(b, c)
		} else {
			b = append(b, '?')
		}
	}
	return string(b)
}

// answer binds an origin's answer to ex: the hop-by-hop headers go, and the body
// becomes one whose WriteTo copies it to the client and whose Close finishes ex.
func (ex *exchange) answer(resp *http.Response) *http.Response {
	removeHopByHop(resp.Header)
	if ex.closeAfter {
		resp.Header.Set("Connection", "close")
	}
	ex.status = resp.StatusCode
	a := &answer{ex: ex, body: resp.Body}
	switch {
	case resp.StatusCode == http.StatusSwitchingProtocols:
		// goproxy relays the upgraded connection: it is ours to count until it ends.
		a.upgraded = true
		ex.slot = ex.p.acquireSlot()
	case resp.ContentLength < 0 && resp.Body != http.NoBody:
		a.stream = true // chunked or until close: pass each piece on as it comes
	}
	resp.Body = a
	return resp
}

// upstreamRequest is r as the upstream client gets it: with a body, one that counts
// what is sent. The server's own request keeps its body, so that net/http still
// sees its Expect: 100-continue reader (it sends 100 Continue on the first read, and
// closes the connection after an answer that did not read the body).
func (ex *exchange) upstreamRequest(r *http.Request) *http.Request {
	if r.Body == nil || r.Body == http.NoBody {
		return r
	}
	r2 := *r
	r2.Body = &countingBody{ReadCloser: r.Body, n: &ex.up}
	return &r2
}

// countingBody counts the request body bytes read to be sent upstream.
type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// answer is the body of every answer goproxy writes to a plain-HTTP client.
type answer struct {
	ex       *exchange
	body     io.ReadCloser
	stream   bool   // no Content-Length: flushed after every write
	upgraded bool   // a 101: body is the upstream end of the upgraded connection
	phrase   string // egressd's own reason phrase: written raw, see exchange.own
	text     string // egressd's own body
	head     bool   // the answer to a HEAD request: no body
	closed   atomic.Bool
}

// WriteTo copies the answer to the client. goproxy's io.Copy calls it with the
// ResponseWriter (or, for text/event-stream, a writer that flushes every write).
func (a *answer) WriteTo(dst io.Writer) (n int64, err error) {
	cw, _ := dst.(*clientWriter)
	switch {
	case cw != nil && a.phrase != "":
		n, err = cw.writeRaw(a.ex.status, a.phrase, a.text, a.head)
	case a.stream:
		if cw != nil {
			cw.commit()
		}
		n, err = copyFlushing(dst, a.body)
	default:
		if cw != nil {
			cw.commit()
			n, err = cw.ResponseWriter.(io.ReaderFrom).ReadFrom(a.body) // net/http's pooled buffer
		} else {
			n, err = io.Copy(dst, a.body)
		}
	}
	a.ex.down.Add(n)
	return n, err
}

// copyBuffers are the buffers of streamed answers.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyFlushing copies src to dst and flushes after every write, as
// httputil.ReverseProxy does with FlushInterval -1.
func copyFlushing(dst io.Writer, src io.Reader) (int64, error) {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	buf := *bp
	f, _ := dst.(http.Flusher)
	var n int64
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				return n, werr
			}
			if f != nil {
				f.Flush()
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

// Read and Write serve goproxy's relay of an upgraded connection.
func (a *answer) Read(p []byte) (int, error) {
	n, err := a.body.Read(p)
	a.ex.down.Add(int64(n))
	return n, err
}

func (a *answer) Write(p []byte) (int, error) {
	w, ok := a.body.(io.Writer)
	if !ok {
		return 0, errors.New("proxy: write to an answer that is not an upgraded connection")
	}
	n, err := w.Write(p)
	a.ex.up.Add(int64(n))
	return n, err
}

// Close closes the origin's body and finishes the exchange; goproxy calls it once
// or twice.
func (a *answer) Close() error {
	if !a.closed.CompareAndSwap(false, true) {
		return nil
	}
	err := a.body.Close()
	a.ex.finish()
	return err
}

// clientWriter is the ResponseWriter goproxy writes to. It holds back the status
// until the body is written, so that an answer of egressd's own can still go out
// raw with its reason phrase, and its Hijack keeps bytes that the client sent early
// (a pipelined TLS ClientHello after CONNECT), which goproxy's ConnectHijack would
// otherwise drop.
type clientWriter struct {
	http.ResponseWriter
	code     int // a final status not yet written
	wrote    bool
	hijacked net.Conn
}

func (w *clientWriter) WriteHeader(code int) {
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		w.ResponseWriter.WriteHeader(code) // interim answers go out at once
		return
	}
	if !w.wrote && w.code == 0 {
		w.code = code
	}
}

// commit writes the held status, once.
func (w *clientWriter) commit() {
	if w.wrote || w.hijacked != nil {
		return
	}
	w.wrote = true
	if w.code != 0 {
		w.ResponseWriter.WriteHeader(w.code)
	}
}

func (w *clientWriter) Write(b []byte) (int, error) {
	w.commit()
	return w.ResponseWriter.Write(b)
}

func (w *clientWriter) Flush() {
	w.commit()
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *clientWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *clientWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.commit()
	c, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	if ec, ok := c.(*earlyConn); ok && len(ec.early) == 0 {
		c = ec.Conn // replayed to net/http by the accept loop, all of it read
	}
	w.hijacked = c
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

// writeRaw writes an answer of egressd's own with its reason phrase on the hijacked
// connection, and closes it.
func (w *clientWriter) writeRaw(status int, phrase, body string, head bool) (int64, error) {
	h := w.Header()
	h.Del("Content-Length")
	h.Del("Connection")
	c, _, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return 0, err
	}
	w.hijacked = c
	defer c.Close()
	var b strings.Builder
	b.WriteString("HTTP/1.1 " + strconv.Itoa(status) + " " + phrase + "\r\n")
	h.Write(&b)
	b.WriteString("Content-Length: " + strconv.Itoa(len(body)) + "\r\nConnection: close\r\n\r\n")
	if !head {
		b.WriteString(body)
	} else {
		body = ""
	}
	if _, err := io.WriteString(c, b.String()); err != nil {
		return 0, err
	}
	return int64(len(body)), nil
}

// earlyConn is a client connection with bytes already read from it: by net/http
// before a hijack, or by the accept loop before it handed the connection to
// net/http. Read gives them first; a tunnel takes them and the raw connection apart
// instead.
type earlyConn struct {
	net.Conn
	early []byte
	// headBy, for a connection the accept loop handed over, is when the first
	// request's head must be in: net/http sets a deadline of its own when it starts
	// reading, which would give a slow client a second ReadHeaderTimeout.
	headBy time.Time
}

// SetReadDeadline holds the first request to headBy. net/http clears the deadline
// (sets zero) once that head is read, which ends the hold.
func (c *earlyConn) SetReadDeadline(t time.Time) error {
	if !c.headBy.IsZero() {
		if t.IsZero() {
			c.headBy = time.Time{}
		} else if t.After(c.headBy) {
			t = c.headBy
		}
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *earlyConn) Read(p []byte) (int, error) {
	if len(c.early) > 0 {
		n := copy(p, c.early)
		c.early = c.early[n:]
		return n, nil
	}
	return c.Conn.Read(p)
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

// hopByHop are the headers that describe one connection, not the message (RFC 9110
// section 7.6.1), and are never forwarded. In canonical form: removeHopByHop
// deletes them from header maps as they are.
var hopByHop = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authorization",
	"Proxy-Authenticate", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// removeHopByHop deletes hop-by-hop headers and the headers that Connection names,
// except for a websocket upgrade, which is carried through.
func removeHopByHop(h http.Header) {
	websocket := isWebsocket(h)
	for _, v := range h["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			name = textproto.TrimString(name)
			if websocket && strings.EqualFold(name, "upgrade") {
				continue
			}
			h.Del(name)
		}
	}
	for _, name := range hopByHop {
		if websocket && (name == "Upgrade" || name == "Connection") {
			continue
		}
		delete(h, name) // canonical already: h.Del would canonicalize it again
	}
	if websocket {
		h.Set("Connection", "Upgrade")
	}
}

func isWebsocket(h http.Header) bool {
	v := h["Upgrade"] // h.Get("Upgrade"), without canonicalizing a canonical name
	return len(v) > 0 && strings.EqualFold(v[0], "websocket")
}
