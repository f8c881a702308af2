package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/egressd/egressd/policy"
)

// upstreams is egressd's one HTTP/1.1 client for plain-HTTP requests: it writes a
// request to its origin and reads the answer on connections it keeps for the next
// request to the same origin. A bodiless request is sent and answered on the
// goroutine that serves the client (net/http's Transport runs two goroutines per
// connection and hands every request and answer between them, which under load
// costs more than the request itself); a request body is written by a goroutine of
// its own while the answer is read, so that an origin may answer before it has
// read the body (an early 413), and an Expect: 100-continue body waits for the
// origin's 100 Continue (or expectTimeout).
//
// Answers are bounded: their headers by maxHeaderBytes, the wait for them by
// headerTimeout (counted once the request is sent), interim 1xx answers by
// maxInterim. A kept connection can have been closed by the origin while it was
// idle: a bodiless request that fails on a reused connection before any byte of an
// answer is tried once more on a new one (as Transport does for idempotent
// requests); a connection about to carry a body is checked first instead.
//
// The request's URL names the decided, normalized target (host:port), which is
// what is dialled: onRequest has put it there.
type upstreams struct {
	dial           func(ctx context.Context, host string, port uint16) (*net.TCPConn, error)
	tlsConfig      *tls.Config // for https:// URLs; nil means the system roots
	idleTimeout    time.Duration
	headerTimeout  time.Duration
	maxHeaderBytes int64
	expectTimeout  time.Duration
	maxIdle        int // per origin
	maxIdleAll     int // in all
	now            func() time.Time

	mu        sync.Mutex
	idle      map[string][]*upstreamConn // by scheme://host:port, most recently used last
	idleCount int                        // connections in idle
	closed    bool
}

// handshakeError is a TLS handshake with an origin that failed.
type handshakeError struct{ err error }

func (e *handshakeError) Error() string { return "TLS handshake: " + e.err.Error() }
func (e *handshakeError) Unwrap() error { return e.err }

// maxInterim bounds the interim (1xx) answers before the final one.
const maxInterim = 5

type upstreamConn struct {
	conn      net.Conn // tcp, or TLS over it
	tcp       *net.TCPConn
	limit     *headerLimit // between conn and br: bounds what answer headers may take
	br        *bufio.Reader
	bw        *bufio.Writer
	key       string
	idleSince time.Time
}

// RoundTrip sends r to its origin and returns the answer, whose body must be read to
// the end or closed. A 101 answer's body is the upgraded connection, readable and
// writable.
func (u *upstreams) RoundTrip(r *http.Request) (*http.Response, error) { return u.send(r, nil, "") }

// send is RoundTrip with the TLS configuration of an https request (nil: the
// default), and id, the identity of a client certificate in it: connections are kept
// per origin and certificate, so that a rotated certificate gets new ones.
func (u *upstreams) send(r *http.Request, tlsConfig *tls.Config, id string) (*http.Response, error) {
	host, port, err := policy.SplitTarget(r.URL.Host, 0)
	if err != nil {
		return nil, err
	}
	if r.URL.Scheme != "http" && r.URL.Scheme != "https" {
		return nil, errors.New("unsupported scheme " + strconv.Quote(r.URL.Scheme))
	}
	key := r.URL.Scheme + "://" + r.URL.Host
	if id != "" {
		key += "#" + id
	}
	hasBody := r.Body != nil && r.Body != http.NoBody
	checkIdle := hasBody || r.Header.Get("Upgrade") != ""
	for attempt := 0; ; attempt++ {
		uc := u.get(key, checkIdle)
		reused := uc != nil
		if uc == nil {
			if uc, err = u.connect(r.Context(), r.URL.Scheme, host, port, key, tlsConfig); err != nil {
				return nil, err
			}
		}
		resp, err := u.exchange(uc, r, hasBody)
		if err == nil {
			return resp, nil
		}
		uc.conn.Close()
		if !reused || attempt > 0 || hasBody || uc.limit.read > 0 || r.Context().Err() != nil || errors.Is(err, errHeaderTimeout) {
			return nil, err
		}
		// The origin closed the kept connection; nothing of an answer was read.
	}
}

// connect dials a new connection to host:port, with TLS for https.
func (u *upstreams) connect(ctx context.Context, scheme, host string, port uint16, key string, tlsConfig *tls.Config) (*upstreamConn, error) {
	tc, err := u.dial(ctx, host, port)
	if err != nil {
		return nil, err
	}
	// c is the connection as the exchange sees it (deadlines, close); rw carries its
	// bytes: raw system calls on a plain one (rawio_linux.go), TLS on an https one.
	var (
		c  net.Conn = tc
		rw io.ReadWriter
	)
	if scheme != "https" {
		rw = newRawIO(tc)
	} else {
		cfg := &tls.Config{}
		switch {
		case tlsConfig != nil:
			cfg = tlsConfig
		case u.tlsConfig != nil:
			cfg = u.tlsConfig.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName = host
		}
		cfg.NextProtos = []string{"http/1.1"}
		tlc := tls.Client(tc, cfg)
		hctx, cancel := context.WithTimeout(ctx, u.headerTimeout)
		err := tlc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			tc.Close()
			return nil, &handshakeError{err: err}
		}
		c, rw = tlc, tlc
	}
	limit := &headerLimit{r: rw, left: -1}
	return &upstreamConn{conn: c, tcp: tc, limit: limit, br: bufio.NewReaderSize(limit, 4096), bw: bufio.NewWriterSize(rw, 4096), key: key}, nil
}

// exchange writes r on uc and reads the answer's header.
func (u *upstreams) exchange(uc *upstreamConn, r *http.Request, hasBody bool) (*http.Response, error) {
	dl := &deadlines{conn: uc.conn, timeout: u.headerTimeout}
	// A client that goes away cancels its request: stop writing and waiting.
	stop := afterFunc(r.Context(), dl.cancel)
	if err := writeRequestHead(uc.bw, r, hasBody); err != nil {
		stop()
		return nil, err
	}
	if err := uc.bw.Flush(); err != nil {
		stop()
		return nil, err
	}
	var bw *bodyWriter
	if hasBody {
		bw = &bodyWriter{uc: uc, r: r, dl: dl, gate: make(chan bool, 1), done: make(chan struct{})}
		expect := strings.EqualFold(r.Header.Get("Expect"), "100-continue")
		go writeRequestBody(bw, expect, u.expectTimeout)
	} else {
		dl.sent()
	}
	resp, err := u.readAnswer(uc, r, dl, bw)
	if err != nil {
		stop()
		if bw != nil {
			bw.release(false)
			uc.conn.Close()
			<-bw.done
		}
		if errors.Is(err, os.ErrDeadlineExceeded) && dl.timedOut() {
			return nil, errHeaderTimeout
		}
		return nil, err
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		stop()
		resp.Body = &upgradedConn{uc: uc}
		return resp, nil
	}
	reusable := !resp.Close
	body := &upstreamBody{body: resp.Body, u: u, uc: uc, bw: bw, stop: stop, reusable: reusable}
	if resp.Body == http.NoBody || resp.ContentLength == 0 {
		if resp.Body != http.NoBody {
			resp.Body.Close()
		}
		body.done(true)
		resp.Body = http.NoBody
		return resp, nil
	}
	resp.Body = body
	return resp, nil
}

// readAnswer reads answers until the final one: interim answers are skipped (100
// Continue lets the body go), at most maxInterim of them; 101 ends the exchange for
// a request that asked for an upgrade.
func (u *upstreams) readAnswer(uc *upstreamConn, r *http.Request, dl *deadlines, bw *bodyWriter) (*http.Response, error) {
	for interim := 0; ; interim++ {
		uc.limit.arm(u.maxHeaderBytes + int64(uc.br.Size()))
		resp, err := http.ReadResponse(uc.br, r)
		exceeded := uc.limit.exceeded
		uc.limit.disarm()
		if exceeded {
			return nil, errHeaderTooLarge
		}
		if err != nil {
			return nil, err
		}
		switch {
		case resp.StatusCode == http.StatusSwitchingProtocols:
			if r.Header.Get("Upgrade") == "" || !isWebsocket(resp.Header) {
				return nil, errors.New("the origin switched protocols on a request that asked for no such upgrade")
			}
			dl.answered()
			return resp, nil
		case resp.StatusCode >= 100 && resp.StatusCode < 200:
			if interim >= maxInterim {
				return nil, errors.New("more than " + strconv.Itoa(maxInterim) + " interim (1xx) answers")
			}
			if resp.StatusCode == http.StatusContinue && bw != nil {
				bw.release(true)
			}
			continue
		}
		dl.answered()
		if bw != nil {
			bw.release(false) // a final answer before 100 Continue: the body is not sent
		}
		return resp, nil
	}
}

// reqWriteExclude are the headers writeRequestHead writes itself or never.
var reqWriteExclude = map[string]bool{"Host": true, "Content-Length": true, "Transfer-Encoding": true, "Trailer": true}

// writeRequestHead writes the request line and headers of r. A body is framed by
// its Content-Length, or chunked when its length is unknown.
func writeRequestHead(bw *bufio.Writer, r *http.Request, hasBody bool) error {
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(r.URL.RequestURI())
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(r.Host)
	bw.WriteString("\r\n")
	if err := r.Header.WriteSubset(bw, reqWriteExclude); err != nil {
		return err
	}
	if hasBody {
		if r.ContentLength > 0 {
			bw.WriteString("Content-Length: " + strconv.FormatInt(r.ContentLength, 10) + "\r\n")
		} else {
			bw.WriteString("Transfer-Encoding: chunked\r\n")
		}
	}
	_, err := bw.WriteString("\r\n")
	return err
}

// bodyWriter sends a request body beside the reading of the answer.
type bodyWriter struct {
	uc   *upstreamConn
	r    *http.Request
	dl   *deadlines
	gate chan bool // true: send the body; false: do not
	once sync.Once
	done chan struct{}
	err  error // set before done is closed
}

// release lets the body go (send) or stops it from going, once.
func (w *bodyWriter) release(send bool) {
	w.once.Do(func() { w.gate <- send })
}

// finished reports whether the whole body was sent.
func (w *bodyWriter) finished() bool {
	select {
	case <-w.done:
		return w.err == nil
	default:
		return false
	}
}

// writeRequestBody is the goroutine that writes a request's body.
func writeRequestBody(w *bodyWriter, expect bool, expectTimeout time.Duration) {
	defer close(w.done)
	if expect {
		t := time.AfterFunc(expectTimeout, func() { w.release(true) })
		send := <-w.gate
		t.Stop()
		if !send {
			w.err = errors.New("body not sent")
			return
		}
	} else {
		w.release(true)
	}
	w.err = copyBody(w.uc.bw, w.r)
	if w.err == nil {
		w.err = w.uc.bw.Flush()
	}
	if w.err != nil {
		// A body cut short must not reach the origin as a complete request.
		w.uc.conn.Close()
		return
	}
	w.dl.sent()
}

// copyBody writes r's body framed as writeRequestHead announced it.
func copyBody(bw *bufio.Writer, r *http.Request) error {
	if r.ContentLength > 0 {
		n, err := io.Copy(bw, io.LimitReader(r.Body, r.ContentLength))
		if err == nil && n < r.ContentLength {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	cw := httputil.NewChunkedWriter(bw)
	if _, err := io.Copy(cw, r.Body); err != nil {
		return err
	}
	if err := cw.Close(); err != nil {
		return err
	}
	if len(r.Trailer) > 0 {
		if err := r.Trailer.Write(bw); err != nil {
			return err
		}
	}
	_, err := bw.WriteString("\r\n")
	return err
}

// deadlines sets the read deadline of an exchange's connection: the answer header
// must come within timeout of the request being sent; a canceled request ends
// every read and write at once. Writer and reader goroutines both use it.
type deadlines struct {
	conn    net.Conn
	timeout time.Duration

	mu       sync.Mutex
	armed    bool // the header deadline is set
	got      bool // the final header has been read
	canceled bool
	expired  bool
}

func (d *deadlines) sent() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.got && !d.canceled {
		d.armed = true
		d.conn.SetReadDeadline(time.Now().Add(d.timeout))
	}
}

func (d *deadlines) answered() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.got = true
	if !d.canceled {
		d.conn.SetReadDeadline(time.Time{})
	}
}

func (d *deadlines) cancel() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.canceled = true
	d.conn.SetDeadline(time.Unix(1, 0))
}

// timedOut reports whether a read that ran past its deadline was held to the header
// timeout (not canceled).
func (d *deadlines) timedOut() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.armed && !d.got && !d.canceled
}

// maxHeaderLine bounds one line of an answer's headers. net/http's reader grows a
// long line by appending, which allocates about five times the line's length: without
// this bound a single line of max_response_header_bytes would cost several times that.
const maxHeaderLine = 64 << 10

// headerLimit bounds the bytes read from the connection while armed, and the length
// of each line in them.
type headerLimit struct {
	r        io.Reader
	left     int64 // -1: not armed
	read     int64 // bytes read while armed, for the retry rule
	line     int   // bytes since the last newline, while armed
	exceeded bool
}

func (l *headerLimit) arm(n int64) { l.left, l.read, l.line, l.exceeded = n, 0, 0, false }
func (l *headerLimit) disarm()     { l.left = -1 }

func (l *headerLimit) Read(p []byte) (int, error) {
	if l.left < 0 {
		return l.r.Read(p)
	}
	if l.left == 0 {
		l.exceeded = true
		return 0, errHeaderTooLarge
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	l.read += int64(n)
	// The line in progress ends at the first newline read; a line wholly inside
	// one read is shorter than a read.
	if i := bytes.IndexByte(p[:n], '\n'); i >= 0 {
		if l.line+i > maxHeaderLine {
			l.exceeded = true
			return n, errHeaderTooLarge
		}
		l.line = n - bytes.LastIndexByte(p[:n], '\n') - 1
	} else {
		l.line += n
	}
	if l.line > maxHeaderLine {
		l.exceeded = true
		return n, errHeaderTooLarge
	}
	return n, err
}

// get returns the most recently kept connection to key, or nil. With check, a kept
// connection is first asked whether the origin has closed it.
func (u *upstreams) get(key string, check bool) *upstreamConn {
	for {
		uc := u.take(key)
		if uc == nil || !check || alive(uc) {
			return uc
		}
		uc.conn.Close()
	}
}

func (u *upstreams) take(key string) *upstreamConn {
	u.mu.Lock()
	defer u.mu.Unlock()
	list := u.idle[key]
	n := len(list)
	if n == 0 {
		return nil
	}
	if uc := list[n-1]; !u.stale(uc) {
		u.idle[key] = list[:n-1]
		u.idleCount--
		return uc
	}
	// The newest is idle too long, so are the ones before it.
	for _, uc := range list {
		uc.conn.Close()
	}
	u.idleCount -= n
	delete(u.idle, key)
	return nil
}

// alive reports whether an idle connection is still open and clean.
func alive(uc *upstreamConn) bool {
	return uc.br.Buffered() == 0 && idleOpen(uc.tcp)
}

// stale reports whether uc has been kept longer than the idle timeout.
func (u *upstreams) stale(uc *upstreamConn) bool {
	return u.now().Sub(uc.idleSince) >= u.idleTimeout
}

// release keeps uc for the next request to its origin, or closes it.
func (u *upstreams) release(uc *upstreamConn, reusable bool) {
	if !reusable || uc.br.Buffered() > 0 { // bytes past the answer: not a clean connection
		uc.conn.Close()
		return
	}
	uc.idleSince = u.now()
	u.mu.Lock()
	if u.closed || len(u.idle[uc.key]) >= u.maxIdle || u.idleCount >= u.maxIdleAll {
		u.mu.Unlock()
		uc.conn.Close()
		return
	}
	if u.idle == nil {
		u.idle = map[string][]*upstreamConn{}
	}
	u.idle[uc.key] = append(u.idle[uc.key], uc)
	u.idleCount++
	u.mu.Unlock()
}

// prune closes the connections idle for longer than the idle timeout.
func (u *upstreams) prune() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for key, list := range u.idle {
		keep := list[:0]
		for _, uc := range list {
			if u.stale(uc) {
				uc.conn.Close()
				u.idleCount--
			} else {
				keep = append(keep, uc)
			}
		}
		if len(keep) == 0 {
			delete(u.idle, key)
		} else {
			u.idle[key] = keep
		}
	}
}

// close closes every kept connection and keeps no more.
func (u *upstreams) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.closed = true
	for key, list := range u.idle {
		for _, uc := range list {
			uc.conn.Close()
		}
		delete(u.idle, key)
	}
	u.idleCount = 0
}

// upstreamBody is an answer's body; read to its end, it gives its connection back.
type upstreamBody struct {
	body     io.ReadCloser
	u        *upstreams
	uc       *upstreamConn // nil once given back or closed
	bw       *bodyWriter   // the request body's writer, if any
	stop     func() bool   // ends the cancellation watch
	reusable bool
	eof      bool
}

func (b *upstreamBody) Read(p []byte) (int, error) {
	if b.eof {
		return 0, io.EOF
	}
	if b.uc == nil {
		return 0, errors.New("proxy: read of an upstream body after Close")
	}
	n, err := b.body.Read(p)
	if err == io.EOF {
		b.eof = true
		b.done(b.reusable)
	} else if err != nil {
		b.done(false)
	}
	return n, err
}

// done gives the connection back (or closes it) once the answer has ended.
func (b *upstreamBody) done(reusable bool) {
	uc := b.uc
	if uc == nil {
		return
	}
	b.uc = nil
	b.stop()
	if b.bw != nil && !b.bw.finished() {
		// The origin answered before it had the whole body: the connection is in no
		// state to carry another request, and closing it ends the writer.
		reusable = false
		uc.conn.Close()
		<-b.bw.done
	}
	b.u.release(uc, reusable)
}

func (b *upstreamBody) Close() error {
	b.done(false) // not read to the end: the rest of the answer is still on the wire
	return nil
}

// upgradedConn is the origin's end of an upgraded connection (a 101 answer).
type upgradedConn struct{ uc *upstreamConn }

func (c *upgradedConn) Read(p []byte) (int, error)  { return c.uc.br.Read(p) }
func (c *upgradedConn) Write(p []byte) (int, error) { return c.uc.conn.Write(p) }
func (c *upgradedConn) Close() error                { return c.uc.conn.Close() }
