package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"time"
)

// Plain HTTP through a proxy is keep-alive requests in absolute form, one after
// another on a connection. net/http's server costs per request more than the
// request's own work: a background read that finds nothing (a goroutine, a system
// call, and two deadlines to stop it), five deadlines set and cleared, a context
// and a connection-state hook. A connection whose first request is plain HTTP is
// served here instead, on a goroutine of its own, while its requests
// are the ones net/http's server would pass to its handler unchanged: HTTP/1.1, in
// absolute form for http://, no body, no Expect, no Upgrade, valid headers and one
// valid Host (parsePlain). The handler is the same (Proxy.ServeHTTP, so goproxy and
// the exchange) and so is the answer on the wire (plainWriter: net/http's framing
// rules). The first request that is anything else, or that does not fit the read
// buffer, goes to net/http with the bytes read so far, and the connection stays
// there: net/http gives it the answer it always gave.
//
// A client that goes away while its request waits for the origin cancels the
// request, as net/http's background read does: a poller watches the connection for
// the peer's end (EPOLLRDHUP), with no system call per request.
//
// The loop reads and writes the client, and plain-HTTP origins are read and
// written, with raw system calls (rawio_linux.go): a loopback write runs the other
// end's receive path and often outlasts a tick of the runtime's sysmon, which then
// takes the processor back and keeps waking every 20 us. With the loop alone sysmon
// took a tenth of egressd's CPU and the bench saw about 0.96x the CPU per request
// of net/http's server; with raw calls too, 0.83x-0.87x.

// plainConn is a client connection whose plain-HTTP requests egressd serves itself.
type plainConn struct {
	p      *Proxy
	c      net.Conn
	remote string
	br     *bufio.Reader // reads c, after the bytes the accept loop read
	bw     *bufio.Writer // writes c
	w      plainWriter
	h      *handoff
	watch  hangUpWatch
	io     io.ReadWriter // c's reads and writes

	mu     sync.Mutex // guards the fields below, between the loop and the poller
	idle   bool       // waiting for the next request; a shutdown may close it
	closed bool
	gone   bool        // the client has shut its end
	ctx    *requestCtx // the request in progress, if any
	werr   error       // the first failed write: the connection is done
}

// connWriter writes to the client; a failed write cancels the request in progress,
// as net/http's does.
type connWriter struct{ pc *plainConn }

func (cw connWriter) Write(b []byte) (int, error) {
	pc := cw.pc
	n, err := pc.io.Write(b)
	if err != nil {
		pc.mu.Lock()
		if pc.werr == nil {
			pc.werr = err
		}
		ctx := pc.ctx
		pc.mu.Unlock()
		if ctx != nil {
			ctx.cancel()
		}
	}
	return n, err
}

// servePlain serves c, whose first bytes (head, read by the accept loop) are not a
// CONNECT, until it closes, goes to net/http, or is hijacked. headBy is when the
// first request's head must be in.
func (p *Proxy) servePlain(c net.Conn, head []byte, headBy time.Time, h *handoff) {
	pc := &plainConn{p: p, c: c, h: h, remote: c.RemoteAddr().String()}
	pc.io = newRawIO(c)
	pc.br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(head), pc.io), headSize)
	pc.bw = bufio.NewWriterSize(connWriter{pc}, 4<<10)
	p.notePeak(p.conns.Add(1))
	if !p.plain.add(pc) {
		p.conns.Add(-1)
		c.Close()
		return
	}
	pc.watch = p.watchHangUp(c, pc.hungUp)
	pc.serve(headBy)
}

// serve is the connection's loop: a request, its answer, the next.
func (pc *plainConn) serve(headBy time.Time) {
	p := pc.p
	for first := true; ; first = false {
		if !first {
			if !pc.setIdle(true) {
				pc.close()
				return
			}
			if pc.br.Buffered() == 0 {
				pc.c.SetReadDeadline(time.Now().Add(p.opts.IdleTimeout))
				if _, err := pc.br.Peek(1); err != nil {
					pc.close() // what net/http does for a connection that goes quiet or ends
					return
				}
			}
			if !pc.setIdle(false) {
				pc.close()
				return
			}
			headBy = time.Now().Add(p.opts.ReadHeaderTimeout)
		}
		end, ok := pc.readHead(headBy)
		if !ok {
			pc.toNetHTTP(headBy)
			return
		}
		b, _ := pc.br.Peek(end)
		r := parsePlain(b)
		if r == nil {
			pc.toNetHTTP(headBy)
			return
		}
		pc.br.Discard(end)
		if !pc.serveRequest(r) {
			return
		}
	}
}

// readHead reads until a whole head is in the read buffer and returns its length,
// or false if the buffer fills first or reading fails (net/http then reads the
// rest and answers as it does).
func (pc *plainConn) readHead(headBy time.Time) (int, bool) {
	deadline := false
	from := 0
	for {
		b, _ := pc.br.Peek(pc.br.Buffered())
		if end := headEnd(b, from); end > 0 {
			return end, true
		}
		if len(b) == pc.br.Size() {
			return 0, false
		}
		from = max(len(b)-2, 0)
		if !deadline {
			pc.c.SetReadDeadline(headBy)
			deadline = true
		}
		if _, err := pc.br.Peek(len(b) + 1); err != nil {
			return 0, false
		}
	}
}

// serveRequest answers r and reports whether the connection is open for the next
// request.
func (pc *plainConn) serveRequest(r *http.Request) bool {
	p := pc.p
	ctx := newRequestCtx()
	defer ctx.cancel()
	r = r.WithContext(ctx)
	r.RemoteAddr = pc.remote
	pc.mu.Lock()
	pc.ctx = ctx
	gone := pc.gone && pc.br.Buffered() == 0
	pc.mu.Unlock()
	if gone {
		ctx.cancel()
	}
	w := &pc.w
	w.reset(pc, r)
	if !pc.handle(w, r) {
		return false
	}
	pc.mu.Lock()
	pc.ctx = nil
	pc.mu.Unlock()
	if w.hijacked {
		return false
	}
	w.finish()
	if !w.reusable() || !p.ready.Load() {
		pc.close()
		return false
	}
	return true
}

// handle runs the handler. A panic ends the connection, as net/http's server ends
// it, and is logged where net/http's server logs it (http.ErrAbortHandler quietly).
func (pc *plainConn) handle(w *plainWriter, r *http.Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				buf := make([]byte, 64<<10)
				buf = buf[:runtime.Stack(buf, false)]
				pc.p.srv.ErrorLog.Printf("http: panic serving %v: %v\n%s", pc.remote, v, buf)
			}
			if !w.hijacked {
				pc.close()
			}
			ok = false
		}
	}()
	pc.p.ServeHTTP(w, r)
	return true
}

// toNetHTTP hands the connection to net/http with the bytes read and not yet
// served; headBy bounds the head they start.
func (pc *plainConn) toNetHTTP(headBy time.Time) {
	early, _ := pc.br.Peek(pc.br.Buffered())
	early = bytes.Clone(early)
	closed := !pc.detach()
	pc.p.conns.Add(-1) // net/http counts it again, or it is closed
	if closed {
		pc.c.Close()
		return
	}
	pc.c.SetReadDeadline(time.Time{})
	pc.h.give(&earlyConn{Conn: pc.c, early: early, headBy: headBy})
}

// detach takes the connection out of the watch and the shutdown's set; false if a
// shutdown has closed it.
func (pc *plainConn) detach() bool {
	pc.watch.stop()
	pc.mu.Lock()
	closed := pc.closed
	pc.closed = true
	pc.mu.Unlock()
	pc.p.plain.remove(pc)
	return !closed
}

// close closes the connection, once.
func (pc *plainConn) close() {
	pc.detach()
	pc.p.conns.Add(-1)
	pc.c.Close()
}

// setIdle marks the connection waiting for a request, or not; false if a shutdown
// has closed it.
func (pc *plainConn) setIdle(idle bool) bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.idle = idle
	return !pc.closed
}

// hungUp is the poller's news that the client has shut its end: the request in
// progress, if any, is canceled.
func (pc *plainConn) hungUp() {
	pc.mu.Lock()
	pc.gone = true
	ctx := pc.ctx
	pc.mu.Unlock()
	if ctx != nil {
		ctx.cancel()
	}
}

// closeIdle closes the connection if it waits for a request (a shutdown), and
// reports whether it did.
func (pc *plainConn) closeIdle() bool {
	pc.mu.Lock()
	if !pc.idle || pc.closed {
		pc.mu.Unlock()
		return false
	}
	pc.closed = true
	pc.mu.Unlock()
	pc.c.Close() // the loop's read fails; it finishes the rest
	return true
}

// plainConns is the connections served by their own loops, for a shutdown.
type plainConns struct {
	mu       sync.Mutex
	conns    map[*plainConn]struct{}
	stopping bool
}

func (s *plainConns) add(pc *plainConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return false
	}
	if s.conns == nil {
		s.conns = make(map[*plainConn]struct{})
	}
	s.conns[pc] = struct{}{}
	return true
}

func (s *plainConns) remove(pc *plainConn) {
	s.mu.Lock()
	delete(s.conns, pc)
	s.mu.Unlock()
}

// shutdown stops new connections, closes idle ones, and waits until the rest have
// finished their requests or ctx ends; then it closes those that are left.
func (s *plainConns) shutdown(ctx context.Context) {
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		s.mu.Lock()
		left := 0
		for pc := range s.conns {
			if !pc.closeIdle() {
				left++
			}
		}
		s.mu.Unlock()
		if left == 0 {
			return
		}
		select {
		case <-ctx.Done():
			s.closeAll()
			return
		case <-tick.C:
		}
	}
}

// closeAll stops new connections and closes every connection now.
func (s *plainConns) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopping = true
	for pc := range s.conns {
		pc.c.Close()
	}
}

// ensure plainWriter has what the handler's writers use.
var (
	_ http.Flusher  = (*plainWriter)(nil)
	_ http.Hijacker = (*plainWriter)(nil)
	_ io.ReaderFrom = (*plainWriter)(nil)
)
