package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/egressd/egressd/dialer"
	"github.com/egressd/egressd/policy"
)

// A CONNECT is the commonest thing a function sends (every HTTPS call), and the
// first request of its connection. The accept loop here reads that first request
// itself, with a small pooled buffer, and opens the tunnel on the accepting
// goroutine: no net/http connection (two 4 KiB buffers that a hijack never gives
// back, a background reader, a context), no goproxy context, no hijack. Plain HTTP
// goes to plain.go's loop, which leaves to net/http what it does not serve. Anything
// else that is not a plain, well-formed CONNECT (a head too large for the buffer or
// one net/http would refuse, egressd.internal, a proxy at its connection limit)
// goes to net/http, and so to goproxy, with the bytes read so far replayed: its
// answer is the one it always was.

// connectPrefix is how a CONNECT request starts.
var connectPrefix = []byte("CONNECT ")

// headSize bounds the first request the accept loop reads itself; a longer head goes
// to net/http, which applies Options.MaxHeaderBytes.
const headSize = 4 << 10

var headBufs = sync.Pool{New: func() any { b := make([]byte, headSize); return &b }}

// serveConns accepts on ln until it is closed, and reads each connection's first
// request on a goroutine of its own. Accept errors are retried as net/http's Serve
// retries them; a permanent one ends the loop, and h passes it on to net/http.
func (p *Proxy) serveConns(accept func() (job, error), h *handoff) {
	var delay time.Duration
	for {
		j, err := accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			h.stop(err)
			return
		}
		delay = 0
		// Counted before the next Accept, which waits while the budget is spent.
		p.reading.Add(1)
		j.slot, j.h = p.acquireSlot(), h
		p.workers.start(j)
	}
}

// acceptConn returns ln's accept: of bare sockets that never enter the runtime's
// poller where tunnels can have pollers and ln is a TCP listener, else of net.Conns.
// A listener's RawConn cannot wait, so bare sockets are accepted on a duplicate of
// its descriptor, an *os.File, which ln closes with itself.
func (p *Proxy) acceptConn(ln *acceptLimiter) func() (job, error) {
	if tl, ok := ln.Listener.(*net.TCPListener); ok && len(p.pollers) > 0 {
		if rc, err := ln.duplicate(tl); err == nil {
			return func() (job, error) {
				ln.awaitBudget()
				s, peer, err := acceptSocket(rc, tl.Addr())
				if err != nil && ln.closed.Load() {
					err = &net.OpError{Op: "accept", Net: "tcp", Addr: tl.Addr(), Err: net.ErrClosed}
				}
				ln.noteError(err)
				if err != nil {
					return job{}, err
				}
				return job{sock: s, peer: peer, pl: p.nextPoller()}, nil
			}
		}
	}
	return func() (job, error) {
		c, err := ln.Accept()
		return job{conn: c}, err
	}
}

// firstRequest serves a connection whose first request is a plain CONNECT, and hands
// every other connection to net/http.
func (p *Proxy) firstRequest(j job) {
	defer p.reading.Add(-1)
	headBy := time.Now().Add(p.opts.ReadHeaderTimeout)
	var src io.Reader = j.conn
	if j.sock != nil {
		src = &sockReader{pl: j.pl, s: j.sock, by: headBy}
	} else {
		j.conn.SetReadDeadline(headBy)
	}
	buf := headBufs.Get().(*[]byte)
	n, end, err := readHead(src, *buf)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		// What net/http does at its ReadHeaderTimeout: close, with no answer.
		headBufs.Put(buf)
		j.slot.release()
		j.close()
		return
	}
	var r *http.Request
	if end > 0 {
		r = parseConnect((*buf)[:end])
	}
	if r == nil || p.conns.Load() > int64(p.opts.MaxConnections) || isLocalHost(r.URL.Hostname()) {
		head := bytes.Clone((*buf)[:n])
		headBufs.Put(buf)
		j.slot.release() // net/http counts the connection again
		plain := r == nil && err == nil && !bytes.HasPrefix(head, connectPrefix)
		c := j.conn
		if j.sock != nil {
			if c, err = j.sock.netConn(j.h.Addr(), net.TCPAddrFromAddrPort(j.peer)); err != nil {
				return
			}
		}
		if plain {
			// A goroutine of its own: the connection may stay for long, and the
			// worker is for the next connection's setup.
			go p.servePlain(c, head, headBy, j.h)
			return
		}
		j.h.give(&earlyConn{Conn: c, early: head, headBy: headBy})
		return
	}
	var early []byte
	if end < n {
		early = bytes.Clone((*buf)[end:n]) // sent before the 200, such as a TLS ClientHello
	}
	headBufs.Put(buf)
	if j.sock != nil {
		r.RemoteAddr = j.peer.String()
	} else {
		j.conn.SetReadDeadline(time.Time{})
		r.RemoteAddr = j.conn.RemoteAddr().String()
	}
	ex, refusal := p.decideConnect(r, r.URL.Host, j.slot)
	if refusal != nil {
		refusal.Write(j.writer(p.opts.IdleTimeout))
		j.close()
		return
	}
	if j.sock != nil {
		p.startPolledTunnel(ex, j.sock, early, j.pl)
		return
	}
	c := j.conn
	if early != nil {
		c = &earlyConn{Conn: c, early: early}
	}
	p.startTunnel(ex, c)
}

// readHead reads from c into buf while what it has read can be the start of a
// CONNECT request, until a whole head (ended by an empty line) is in buf. It returns
// the bytes read and where the head ends: 0 if they are not a whole CONNECT head.
func readHead(c io.Reader, buf []byte) (n, end int, err error) {
	for n < len(buf) {
		var m int
		m, err = c.Read(buf[n:])
		n += m
		if !bytes.HasPrefix(connectPrefix, buf[:min(n, len(connectPrefix))]) {
			return n, 0, nil
		}
		// An empty line that ends in the new bytes starts at most two bytes before
		// them, so a client that sends a byte at a time costs no rescans.
		if end = headEnd(buf[:n], max(n-m-2, 0)); end > 0 || err != nil {
			return n, end, err
		}
	}
	return n, 0, nil
}

// headEnd returns the length of the head in b, through the empty line that ends
// it (a line ends with LF or CRLF, as net/textproto reads it), or 0. The empty line
// is looked for from b[from:]: the head cannot end before that.
func headEnd(b []byte, from int) int {
	for i := indexByteFrom(b, '\n', from); i >= 0; {
		rest := b[i+1:]
		switch {
		case len(rest) > 0 && rest[0] == '\n':
			return i + 2
		case len(rest) > 1 && rest[0] == '\r' && rest[1] == '\n':
			return i + 3
		}
		j := bytes.IndexByte(rest, '\n')
		if j < 0 {
			return 0
		}
		i += 1 + j
	}
	return 0
}

// indexByteFrom is bytes.IndexByte(b[from:], c) as an index into b, or -1.
func indexByteFrom(b []byte, c byte, from int) int {
	if i := bytes.IndexByte(b[from:], c); i >= 0 {
		return from + i
	}
	return -1
}

// parseHead parses head with net/http's own parser and returns the request if
// net/http's server would pass it to its handler as it is: HTTP/1, no body, no
// Expect, Host headers it accepts, valid header names and values, and the parser
// used exactly head; and how many Host headers head has. Anything else is nil,
// for net/http to answer.
func parseHead(head []byte) (*http.Request, int) {
	hr := headReaders.Get().(*headReader)
	defer headReaders.Put(hr)
	hr.src.Reset(head)
	hr.br.Reset(&hr.src)
	r, err := http.ReadRequest(&hr.br)
	if err != nil || hr.br.Buffered() > 0 || hr.src.Len() > 0 {
		return nil, 0
	}
	if r.ProtoMajor != 1 || r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
		return nil, 0
	}
	if _, ok := r.Header["Expect"]; ok {
		return nil, 0
	}
	hosts, ok := hostHeaders(head) // ReadRequest has removed them from r.Header
	if !ok {
		return nil, 0
	}
	for name, values := range r.Header {
		if !httpguts.ValidHeaderFieldName(name) {
			return nil, 0
		}
		for _, v := range values {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, 0
			}
		}
	}
	return r, hosts
}

// parseConnect returns the CONNECT request in head that net/http's server would
// pass to its handler as it is (parseHead), or nil.
func parseConnect(head []byte) *http.Request {
	if r, _ := parseHead(head); r != nil && r.Method == http.MethodConnect {
		return r
	}
	return nil
}

// parsePlain returns the plain-HTTP request in head that a plainConn serves: one
// net/http's server would pass to its handler as it is (parseHead), HTTP/1.1 with
// its one Host header, for an http:// URL of a host other than egressd.internal,
// asking for no upgrade. Anything else is nil: net/http serves it. Common heads
// take parseCommonPlain's shorter way to the same request.
func parsePlain(head []byte) *http.Request {
	if r := parseCommonPlain(head); r != nil {
		return r
	}
	return parsePlainNetHTTP(head)
}

// parsePlainNetHTTP is parsePlain through net/http's parser.
func parsePlainNetHTTP(head []byte) *http.Request {
	r, hosts := parseHead(head)
	if r == nil || r.Method == http.MethodConnect || r.ProtoMinor != 1 || hosts != 1 {
		return nil
	}
	if r.URL.Scheme != "http" || r.URL.Host == "" || isLocalHost(r.URL.Hostname()) {
		return nil
	}
	if _, ok := r.Header["Upgrade"]; ok {
		return nil
	}
	return r
}

// hostHeaders counts the Host header lines of a head that http.ReadRequest
// accepted, and reports whether net/http's server accepts every value.
func hostHeaders(head []byte) (n int, ok bool) {
	_, rest, _ := bytes.Cut(head, []byte("\n")) // the request line
	for len(rest) > 0 {
		var line []byte
		line, rest, _ = bytes.Cut(rest, []byte("\n"))
		name, value, found := bytes.Cut(line, []byte(":"))
		if found && bytes.EqualFold(name, []byte("Host")) {
			n++
			if !httpguts.ValidHostHeader(string(bytes.Trim(value, " \t\r"))) {
				return n, false
			}
		}
	}
	return n, true
}

// headReader parses a head already in memory.
type headReader struct {
	src bytes.Reader
	br  bufio.Reader
}

var headReaders = sync.Pool{New: func() any {
	hr := &headReader{}
	hr.br = *bufio.NewReaderSize(&hr.src, headSize)
	return hr
}}

func isLocalHost(host string) bool {
	return strings.EqualFold(strings.TrimSuffix(host, "."), LocalHost)
}

// handoff is the listener net/http serves: the connections the accept loop leaves
// to it. Closing it (net/http does, at Shutdown) closes the real listener.
type handoff struct {
	ln    net.Listener
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	err   error // why it stopped; set before done is closed
}

func newHandoff(ln net.Listener) *handoff {
	return &handoff{ln: ln, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (h *handoff) Accept() (net.Conn, error) {
	select {
	case c := <-h.conns:
		return c, nil
	case <-h.done:
		return nil, h.err
	}
}

func (h *handoff) Close() error {
	h.stop(net.ErrClosed)
	return h.ln.Close()
}

func (h *handoff) Addr() net.Addr { return h.ln.Addr() }

func (h *handoff) stop(err error) {
	h.once.Do(func() {
		h.err = err
		close(h.done)
	})
}

// give hands c to net/http, or closes it once the listener is closed.
func (h *handoff) give(c net.Conn) {
	select {
	case h.conns <- c:
	case <-h.done:
		c.Close()
	}
}

// decideConnect decides a CONNECT to hostport. It returns the exchange and, for a
// target that may not be reached, the answer to write before closing the connection
// (the exchange is then finished). slot is the connection's place under
// MaxConnections, if it holds one already.
func (p *Proxy) decideConnect(r *http.Request, hostport string, slot *connSlot) (ex *exchange, refusal *http.Response) {
	ex = p.newExchange(kindConnect, r)
	ex.slot = slot
	ex.target = hostport
	host, port, err := policy.SplitTarget(hostport, 0)
	if err != nil {
		return ex, ex.refuseConnect(r, ex.badRequest(r, err))
	}
	d, ok := ex.decide(host, port)
	if !ok {
		return ex, ex.refuseConnect(r, ex.deny(r, d))
	}
	if !d.Allow && (d.Reason == policy.ReasonInvalidHost || d.Reason == policy.ReasonNonCanonicalIP) {
		ex.decision = decisionDeny // report mode lets denials through, but no target of this kind
		return ex, ex.refuseConnect(r, ex.deny(r, d))
	}
	return ex, nil
}

// refuseConnect turns an answer of egressd's own into goproxy's rejection of a
// CONNECT, which it writes (status line as given) on the hijacked connection before
// closing it. The exchange ends here: nothing more happens on it.
func (ex *exchange) refuseConnect(r *http.Request, resp *http.Response) *http.Response {
	a := resp.Body.(*answer)
	resp.Body = io.NopCloser(strings.NewReader(a.text))
	resp.Header.Set("Connection", "close")
	if a.phrase != "" {
		resp.Status = fmt.Sprintf("%d %s", resp.StatusCode, a.phrase)
	}
	ex.finish()
	return resp
}

// startTunnel dials the decided target and answers 200, in the HTTP handler's
// goroutine, then hands the bytes to the tunnel and returns. An idle tunnel so
// keeps nothing of the handler's deep stack (grown by parsing and dialling), the
// request, or net/http's buffers. The tunnel owns ex from then on and finishes it
// when it ends.
func (p *Proxy) startTunnel(ex *exchange, client net.Conn) {
	if ex.slot == nil {
		ex.slot = p.acquireSlot()
	}
	if pl := p.nextPoller(); pl != nil {
		if cs, ok := detachClient(client); ok {
			var early []byte
			if ec, ok := client.(*earlyConn); ok {
				early = ec.early
			}
			client.Close() // cs is the client's socket now
			p.startPolledTunnel(ex, cs, early, pl)
			return
		}
	}
	upstream, err := p.dialer.Dial(context.Background(), ex.host, ex.port)
	if err != nil {
		ex.refuseTunnel(client, err)
		client.Close()
		ex.finish()
		return
	}
	if !ex.established(client) {
		upstream.Close()
		client.Close()
		ex.finish()
		return
	}
	p.relay(ex, client, upstream)
}

var connectEstablished = []byte("HTTP/1.1 200 Connection established\r\n\r\n")

// established answers a CONNECT with 200 and records it, or records a client that
// has gone; false then, for the caller to close both ends and finish ex.
func (ex *exchange) established(client io.Writer) bool {
	if _, err := client.Write(connectEstablished); err != nil {
		ex.status, ex.reason = 499, "client gone"
		return false
	}
	ex.status = http.StatusOK
	ex.answered()
	return true
}

// startPolledTunnel is startTunnel for a tunnel that pl moves from the start: cs
// is the client's socket, the upstream is dialled as one (poller.connect), and
// neither enters the runtime's poller. early is what the client sent after its
// CONNECT, such as a TLS ClientHello; it goes upstream first.
func (p *Proxy) startPolledTunnel(ex *exchange, cs *socket, early []byte, pl *poller) {
	if ex.slot == nil {
		ex.slot = p.acquireSlot()
	}
	upstream, err := dialer.DialWith(context.Background(), p.dialer, ex.host, ex.port, pl.connect)
	if err != nil {
		ex.refuseTunnel(socketWriter{pl, cs, p.opts.IdleTimeout}, err)
		cs.close()
		ex.finish()
		return
	}
	if !ex.established(socketWriter{pl, cs, p.opts.IdleTimeout}) {
		upstream.close()
		cs.close()
		ex.finish()
		return
	}
	if len(early) > 0 {
		n, err := pl.writeAll(upstream, early, p.opts.IdleTimeout)
		ex.up.Add(int64(n))
		if err != nil {
			upstream.close()
			cs.close()
			ex.finish()
			return
		}
	}
	t := &tunnel{host: ex.host, port: ex.port, ex: ex, end: p.endTunnel}
	t.running.Store(2)
	pl.attachSockets(t, cs, upstream)
	p.track(t)
	t.start()
}

// relay hands client and upstream to a tunnel: the bytes the client sent early (an
// earlyConn) go upstream first, then a poller or two copiers move the rest. The
// tunnel owns ex from then on and finishes it when it ends.
func (p *Proxy) relay(ex *exchange, client net.Conn, upstream *net.TCPConn) {
	if ec, ok := client.(*earlyConn); ok {
		client = ec.Conn
		n, err := upstream.Write(ec.early)
		ex.up.Add(int64(n))
		if err != nil {
			upstream.Close()
			client.Close()
			ex.finish()
			return
		}
	}
	t := &tunnel{client: client, upstream: upstream, host: ex.host, port: ex.port, ex: ex, end: p.endTunnel}
	t.running.Store(2)
	if pl := p.nextPoller(); pl != nil {
		pl.attach(t) // before the tunnel is in the set, where sweeps find it
	}
	p.track(t)
	t.start()
}

// track puts t in the tunnel set, where sweeps, revocations and shutdown find it,
// and counts it.
func (p *Proxy) track(t *tunnel) {
	p.tunnels.add(t)
	p.tunnelsLive.Add(1)
	p.metrics.tunnelsActive.Inc()
}

// endTunnel runs once, when both directions of t have ended.
func (p *Proxy) endTunnel(t *tunnel) {
	p.tunnels.remove(t)
	p.metrics.tunnelsActive.Dec()
	ex := t.ex
	up, down := t.up.Load(), t.down.Load()
	ex.up.Add(up)
	ex.down.Store(down)
	p.metrics.bytesUp.Add(float64(up))
	p.metrics.bytesDown.Add(float64(down))
	ex.closedBy = t.closeReason()
	p.metrics.tunnelsClosed.WithLabelValues(ex.closedBy).Inc()
	ex.finish()
	p.tunnelsLive.Add(-1)
}

// refuseTunnel answers a CONNECT whose upstream could not, or may not, be reached,
// with the same status, reason phrase and body as a plain-HTTP request gets.
func (ex *exchange) refuseTunnel(client io.Writer, err error) {
	resp := ex.failure(&http.Request{Method: http.MethodConnect}, err)
	a := resp.Body.(*answer)
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", resp.StatusCode, a.phrase)
	resp.Header.Set("Connection", "close")
	resp.Header.Set("Content-Length", fmt.Sprint(len(a.text)))
	resp.Header.Write(&b)
	b.WriteString("\r\n")
	b.WriteString(a.text)
	io.WriteString(client, b.String())
}
