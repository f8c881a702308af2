package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// upstreams sends the simplest requests, bodiless GET, HEAD and OPTIONS, to their
// origin on the goroutine that serves the client: write the request, read the
// answer, on one connection kept for the next request. net/http's Transport runs
// two goroutines per upstream connection and hands every request and answer
// between them and the caller; under load those hand-offs cost more than the
// request itself. Everything else (bodies, upgrades, Expect) goes through the
// Transport, whose handling of those cases is worth its cost: onRequest picks.
//
// A kept connection can have been closed by the origin while it was idle; as
// Transport does for idempotent requests, a request that fails on a reused
// connection before any answer is tried once more on a new one.
type upstreams struct {
	dial        func(ctx context.Context, host string, port uint16) (*net.TCPConn, error)
	idleTimeout time.Duration
	maxIdle     int // per origin
	maxIdleAll  int // in all
	now         func() time.Time

	mu        sync.Mutex
	idle      map[string][]*upstreamConn // by host:port, most recently used last
	idleCount int                        // connections in idle
	closed    bool
}

type upstreamConn struct {
	conn      *net.TCPConn
	br        *bufio.Reader
	bw        *bufio.Writer
	key       string
	idleSince time.Time
}

// simple reports whether r can take the synchronous path of upstreams.
func simple(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
	default:
		return false
	}
	return (r.Body == nil || r.Body == http.NoBody) && r.ContentLength == 0 &&
		len(r.TransferEncoding) == 0 && r.URL.Scheme == "http" &&
		r.Header.Get("Upgrade") == "" && r.Header.Get("Expect") == ""
}

// RoundTrip sends r, a simple request, to its origin and returns the answer, whose
// body must be read to the end or closed.
func (u *upstreams) RoundTrip(r *http.Request) (*http.Response, error) {
	host, port, err := URLTarget(r.URL)
	if err != nil {
		return nil, err
	}
	key := net.JoinHostPort(host, strconv.Itoa(int(port)))
	for attempt := 0; ; attempt++ {
		uc := u.get(key)
		reused := uc != nil
		if uc == nil {
			c, err := u.dial(r.Context(), host, port)
			if err != nil {
				return nil, err
			}
			uc = &upstreamConn{conn: c, br: bufio.NewReaderSize(c, 4096), bw: bufio.NewWriterSize(c, 4096), key: key}
		}
		resp, err := u.exchange(uc, r)
		if err == nil {
			return resp, nil
		}
		uc.conn.Close()
		if !reused || attempt > 0 || r.Context().Err() != nil {
			return nil, err
		}
		// The origin closed the kept connection; nothing of an answer was read.
	}
}

// exchange writes r on uc and reads the answer's header.
func (u *upstreams) exchange(uc *upstreamConn, r *http.Request) (*http.Response, error) {
	// A client that goes away cancels its request: stop waiting for the origin.
	stop := context.AfterFunc(r.Context(), func() { uc.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := r.Write(uc.bw); err != nil {
		return nil, err
	}
	if err := uc.bw.Flush(); err != nil {
		return nil, err
	}
	for {
		resp, err := http.ReadResponse(uc.br, r)
		if err != nil {
			return nil, err
		}
		switch {
		case resp.StatusCode == http.StatusSwitchingProtocols:
			return nil, errors.New("the origin switched protocols on a request that asked for no upgrade")
		case resp.StatusCode >= 100 && resp.StatusCode < 200:
			continue // an interim answer (103 Early Hints): the final one follows
		}
		reusable := !resp.Close && !r.Close
		if resp.Body == http.NoBody || resp.ContentLength == 0 {
			if resp.Body != http.NoBody {
				resp.Body.Close()
				resp.Body = http.NoBody
			}
			u.release(uc, reusable)
			return resp, nil
		}
		resp.Body = &upstreamBody{body: resp.Body, u: u, uc: uc, reusable: reusable}
		return resp, nil
	}
}

// get returns the most recently kept connection to key, or nil.
func (u *upstreams) get(key string) *upstreamConn {
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
		uc := b.uc
		b.uc, b.eof = nil, true
		b.u.release(uc, b.reusable)
	} else if err != nil {
		b.uc.conn.Close()
		b.uc = nil
	}
	return n, err
}

func (b *upstreamBody) Close() error {
	if b.uc != nil { // not read to the end: the rest of the answer is still on the wire
		b.uc.conn.Close()
		b.uc = nil
	}
	return nil
}
