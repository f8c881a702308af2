package proxy

import (
	"bufio"
	"context"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// answerCases are handlers that write an answer each way a handler can, for
// TestPlainWriterAsNetHTTP.
var answerCases = []struct {
	name    string
	request string // the request line's method and any extra header lines
	handler http.HandlerFunc
}{
	{"length and type set", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "5")
		w.Header().Set("Content-Type", "text/x-test")
		w.WriteHeader(200)
		io.WriteString(w, "hello")
	}},
	{"small body, nothing set", "GET", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "<html><body>hello</body></html>")
	}},
	{"large body, nothing set", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(strings.Repeat("0123456789", 500)))
	}},
	{"many small writes past the buffer", "GET", func(w http.ResponseWriter, r *http.Request) {
		for range 300 {
			io.WriteString(w, "0123456789")
		}
	}},
	{"flushed after a small write", "GET", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "%PDF-")
		w.(http.Flusher).Flush()
		io.WriteString(w, "rest")
	}},
	{"flushed before any write", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.(http.Flusher).Flush()
		io.WriteString(w, "late")
	}},
	{"read from a reader", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		io.Copy(w, strings.NewReader(strings.Repeat("abc", 20000)))
	}},
	{"read from a reader with a length", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "60000")
		w.(io.ReaderFrom).ReadFrom(strings.NewReader(strings.Repeat("abc", 20000)))
	}},
	{"HEAD, body written", "HEAD", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "not sent")
	}},
	{"HEAD, length set", "HEAD", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1234")
		w.WriteHeader(200)
	}},
	{"HEAD, nothing written", "HEAD", func(w http.ResponseWriter, r *http.Request) {}},
	{"204 with a length and a body", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "4")
		w.Header().Set("Transfer-Encoding", "chunked")
		w.WriteHeader(204)
		io.WriteString(w, "body")
	}},
	{"304 with type and length", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", "10")
		w.Header().Set("Etag", `"x"`)
		w.WriteHeader(304)
	}},
	{"nothing at all", "GET", func(w http.ResponseWriter, r *http.Request) {}},
	{"status only", "GET", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }},
	{"unknown status", "GET", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(599) }},
	{"status twice", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(201)
		w.WriteHeader(404)
		io.WriteString(w, "x")
	}},
	{"interim 103 then 200", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.WriteHeader(103)
		w.Header().Del("Link")
		io.WriteString(w, "final")
	}},
	{"announced trailer", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum, X-Unset")
		w.WriteHeader(200)
		io.WriteString(w, "body")
		w.Header().Set("X-Sum", "42")
	}},
	{"prefixed trailer", "GET", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "body")
		w.(http.Flusher).Flush()
		w.Header().Set(http.TrailerPrefix+"X-Late", "yes")
	}},
	{"Connection: close by the handler", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye")
	}},
	{"Connection: close by the client", "GET\r\nConnection: close", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "bye")
	}},
	{"Connection: close by the client, large body", "GET\r\nConnection: keep-alive, close", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(strings.Repeat("z", 3000)))
	}},
	{"identity encoding", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Transfer-Encoding", "identity")
		w.Write([]byte(strings.Repeat("i", 3000)))
	}},
	{"chunked and a length set", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Transfer-Encoding", "chunked")
		w.Header().Set("Content-Length", "3")
		io.WriteString(w, "abc")
	}},
	{"content encoding, no type", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Encoding", "gzip")
		io.WriteString(w, "\x1f\x8b\x08rest")
	}},
	{"invalid length", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "abc")
		io.WriteString(w, "body")
	}},
	{"more than the length", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "3")
		io.WriteString(w, "ab")
		io.WriteString(w, "cd")
	}},
	{"less than the length", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		io.WriteString(w, "short")
	}},
	{"header changed after WriteHeader", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Before", "1")
		w.WriteHeader(200)
		w.Header().Set("X-After", "2")
		io.WriteString(w, "x")
	}},
	{"Header first called after WriteHeader", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(202)
		w.Header().Set("X-After", "2")
		io.WriteString(w, "x")
	}},
	{"Date set", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Date", "Sun, 06 Nov 1994 08:49:37 GMT")
		io.WriteString(w, "x")
	}},
	{"many values, newlines in a value", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.Header()["X-Multi"] = []string{"a", "b"}
		w.Header()["X-Nl"] = []string{"one\r\ntwo"}
		w.Header()["x-lower"] = []string{"kept as given"}
		io.WriteString(w, "x")
	}},
	{"101 without upgrade headers", "GET", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(101)
	}},
}

var dateLine = regexp.MustCompile(`\r\nDate: [^\r]*\r\n`)

// TestPlainWriterAsNetHTTP: for every way a handler can answer, a plainWriter puts
// on the wire what net/http's server puts there (Date aside), and keeps or ends
// the connection as net/http does.
func TestPlainWriterAsNetHTTP(t *testing.T) {
	for _, tc := range answerCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			method, extra, _ := strings.Cut(tc.request, "\r\n")
			req := method + " http://origin.invalid/x HTTP/1.1\r\nHost: origin.invalid\r\n"
			if extra != "" {
				req += extra + "\r\n"
			}
			req += "\r\n"
			want, wantOpen := netHTTPAnswer(t, req, tc.handler)
			got, gotOpen := plainAnswer(t, req, tc.handler)
			want = dateLine.ReplaceAllString(want, "\r\nDate: (now)\r\n")
			got = dateLine.ReplaceAllString(got, "\r\nDate: (now)\r\n")
			if got != want {
				t.Errorf("plainWriter wrote\n%q\nnet/http wrote\n%q", got, want)
			}
			if gotOpen != wantOpen {
				t.Errorf("connection kept open: plainWriter %v, net/http %v", gotOpen, wantOpen)
			}
		})
	}
}

// netHTTPAnswer sends req to a net/http server whose handler is h, then a second
// request, and returns the bytes of the first answer and whether the server read
// the second.
func netHTTPAnswer(t *testing.T, req string, h http.HandlerFunc) (string, bool) {
	t.Helper()
	ln := listenLoopback(t)
	second := make(chan struct{}, 1)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/second" {
			second <- struct{}{}
			w.Header().Set("Connection", "close")
			return
		}
		h(w, r)
	}), ErrorLog: discardLog()}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return exchangeTwice(t, ln.Addr().String(), req, second)
}

// plainAnswer is netHTTPAnswer with a plainConn serving the connection.
func plainAnswer(t *testing.T, req string, h http.HandlerFunc) (string, bool) {
	t.Helper()
	ln := listenLoopback(t)
	p, err := New(Options{LocalHandler: http.NotFoundHandler()})
	if err != nil {
		t.Fatal(err)
	}
	p.ready.Store(true)
	second := make(chan struct{}, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		pc := &plainConn{p: p, c: c, remote: c.RemoteAddr().String()}
		pc.io = c
		pc.br = bufio.NewReader(c)
		pc.bw = bufio.NewWriter(connWriter{pc})
		for i := 0; i < 2; i++ {
			r, err := http.ReadRequest(pc.br)
			if err != nil {
				c.Close()
				return
			}
			if i == 1 {
				second <- struct{}{}
				c.Close()
				return
			}
			w := &pc.w
			w.reset(pc, r)
			h(w, r)
			if w.hijacked {
				return
			}
			w.finish()
			if !w.reusable() {
				c.Close()
				return
			}
		}
	}()
	return exchangeTwice(t, ln.Addr().String(), req, second)
}

// exchangeTwice sends req, reads its answer (interim ones, the body and trailers:
// all of it, raw), sends a second request, and reports whether it arrived before
// the connection closed.
func exchangeTwice(t *testing.T, addr, req string, second chan struct{}) (string, bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	var raw strings.Builder
	br := bufio.NewReader(io.TeeReader(c, &raw))
	parsed, err := http.ReadRequest(bufio.NewReader(strings.NewReader(req)))
	if err != nil {
		t.Fatal(err)
	}
	for {
		resp, err := http.ReadResponse(br, parsed)
		if err != nil {
			t.Fatalf("reading the answer: %v (so far %q)", err, raw.String())
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode >= 200 || resp.StatusCode == 101 {
			break
		}
	}
	got := raw.String()
	io.WriteString(c, "GET http://origin.invalid/second HTTP/1.1\r\nHost: origin.invalid\r\n\r\n")
	closed := make(chan struct{})
	go func() {
		io.Copy(io.Discard, c)
		close(closed)
	}()
	select {
	case <-second:
		return got, true
	case <-closed:
		select {
		case <-second:
			return got, true
		default:
			return got, false
		}
	}
}

func listenLoopback(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func discardLog() *log.Logger { return log.New(io.Discard, "", 0) }

// echoOrigin answers every request on a connection with its method, path and body.
func echoOrigin(t *testing.T) *rawOrigin {
	return startRawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		for {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			b, _ := io.ReadAll(r.Body)
			io.WriteString(c, okAnswer(r.Method+" "+r.URL.Path+" "+string(b)))
		}
	})
}

// readAnswer reads one answer from br and returns its status, its body, and
// whether it says the connection closes.
func readAnswer(t *testing.T, br *bufio.Reader, method string) (int, string, bool) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading an answer: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading an answer's body: %v", err)
	}
	return resp.StatusCode, string(b), resp.Close
}

func plainConnsOpen(p *Proxy) int {
	p.plain.mu.Lock()
	defer p.plain.mu.Unlock()
	return len(p.plain.conns)
}

// TestPlainConnection: a connection that starts with plain HTTP is served by its
// own loop, answers in order, pipelined or not, until a request net/http must
// serve (a body, a malformed head), when net/http takes the connection and the
// bytes already read, and answers as it would have from the start.
func TestPlainConnection(t *testing.T) {
	origin := echoOrigin(t)
	log := &syncBuffer{}
	p, addr := serveProxy(t, Options{Logger: slog.New(slog.NewJSONHandler(log, nil))}, origin.addr())
	base := "http://" + origin.addr()
	get := func(path string) string { return "GET " + base + path + " HTTP/1.1\r\nHost: x\r\n\r\n" }

	c, br := rawRequest(t, addr, get("/one"))
	if code, body, _ := readAnswer(t, br, "GET"); code != 200 || body != "GET /one " {
		t.Fatalf("first answer %d %q", code, body)
	}
	if n := plainConnsOpen(p); n != 1 {
		t.Fatalf("%d connections on the plain loop after a GET; want 1", n)
	}
	io.WriteString(c, get("/two")+get("/three")) // pipelined
	for _, want := range []string{"GET /two ", "GET /three "} {
		if code, body, _ := readAnswer(t, br, "GET"); code != 200 || body != want {
			t.Fatalf("pipelined answer %d %q; want %q", code, body, want)
		}
	}
	io.WriteString(c, "POST "+base+"/four HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"+get("/five"))
	for _, want := range []string{"POST /four abc", "GET /five "} {
		if code, body, _ := readAnswer(t, br, "GET"); code != 200 || body != want {
			t.Fatalf("answer after the hand-off %d %q; want %q", code, body, want)
		}
	}
	if n := plainConnsOpen(p); n != 0 {
		t.Errorf("%d connections on the plain loop after a POST; want 0 (net/http's)", n)
	}
	if n := strings.Count(log.String(), `"msg":"request"`); n != 5 {
		t.Errorf("%d access log lines; want 5", n)
	}

	// A malformed second request is answered as net/http answers it first.
	bad := "GET " + base + "/ HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n"
	_, br1 := rawRequest(t, addr, bad)
	wantCode, wantBody, _ := readAnswer(t, br1, "GET")
	c2, br2 := rawRequest(t, addr, get("/ok"))
	readAnswer(t, br2, "GET")
	io.WriteString(c2, bad)
	if code, body, _ := readAnswer(t, br2, "GET"); code != wantCode || body != wantBody || code != 400 {
		t.Errorf("malformed second request: %d %q; first: %d %q", code, body, wantCode, wantBody)
	}
}

// TestPlainClientGone: a client that closes its connection while its request waits
// for the origin cancels the request at once, as with net/http.
func TestPlainClientGone(t *testing.T) {
	got := make(chan struct{}, 1)
	origin := startRawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		got <- struct{}{}
		io.Copy(io.Discard, br) // never answers; returns when the proxy closes
	})
	log := &syncBuffer{}
	p, addr := serveProxy(t, Options{Logger: slog.New(slog.NewJSONHandler(log, nil))}, origin.addr())
	c, _ := rawRequest(t, addr, "GET http://"+origin.addr()+"/ HTTP/1.1\r\nHost: x\r\n\r\n")
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the origin never had the request")
	}
	if n := plainConnsOpen(p); n != 1 {
		t.Fatalf("%d connections on the plain loop; want 1", n)
	}
	c.Close()
	// The origin's answer wait is 60 s.
	if !waitFor(func() bool { return strings.Contains(log.String(), `"msg":"request"`) }) {
		t.Fatal("no access log line 2 s after the client went away: the request still waits")
	}
	if !waitFor(func() bool { return plainConnsOpen(p) == 0 }) {
		t.Fatal("the connection is still on the plain loop")
	}
}

// TestPlainTimeouts: a kept connection that stays quiet is closed after the idle
// timeout, with no answer; one whose next head does not come whole within the
// header timeout gets what net/http gives a first request that does the same.
func TestPlainTimeouts(t *testing.T) {
	origin := echoOrigin(t)
	get := "GET http://" + origin.addr() + "/ HTTP/1.1\r\nHost: x\r\n\r\n"
	short, long := 300*time.Millisecond, 20*time.Second
	_, idleAddr := serveProxy(t, Options{IdleTimeout: short, ReadHeaderTimeout: long}, origin.addr())
	_, headAddr := serveProxy(t, Options{IdleTimeout: long, ReadHeaderTimeout: short}, origin.addr())
	fresh, _ := rawRequest(t, headAddr, "GET http://")
	netHTTP, err := io.ReadAll(fresh)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, addr, then, want string }{
		{"idle", idleAddr, "", ""},
		{"partial head", headAddr, "GET http://", string(netHTTP)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, br := rawRequest(t, tc.addr, get)
			readAnswer(t, br, "GET")
			if tc.then != "" {
				io.WriteString(c, tc.then)
			}
			start := time.Now()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := io.ReadAll(br)
			if err != nil || string(got) != tc.want {
				t.Fatalf("read %q, %v; want %q and the connection closed", got, err, tc.want)
			}
			if d := time.Since(start); d < 200*time.Millisecond {
				t.Errorf("closed after %v; want the timeout, 300ms", d)
			}
		})
	}
}

// TestPlainShutdown: a shutdown closes a kept connection that waits for a request
// at once, and lets a request in progress finish, its answer saying the connection
// closes.
func TestPlainShutdown(t *testing.T) {
	release := make(chan struct{})
	var releaseOnce sync.Once
	letGo := func() { releaseOnce.Do(func() { close(release) }) }
	origin := startRawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		for {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if r.URL.Path == "/slow" {
				<-release
			}
			io.WriteString(c, okAnswer("done"))
		}
	})
	t.Cleanup(letGo) // before the origin's cleanup waits for its handlers
	p, addr := serveProxy(t, Options{}, origin.addr())
	get := func(path string) string { return "GET http://" + origin.addr() + path + " HTTP/1.1\r\nHost: x\r\n\r\n" }
	idle, idleBr := rawRequest(t, addr, get("/"))
	readAnswer(t, idleBr, "GET")
	busy, busyBr := rawRequest(t, addr, get("/"))
	readAnswer(t, busyBr, "GET")
	io.WriteString(busy, get("/slow"))
	if !waitFor(func() bool { return plainInFlight(p) > 0 }) {
		t.Fatal("the slow request is not in progress on the plain loop after 2 s")
	}

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- p.Shutdown(ctx)
	}()
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := idleBr.Read(make([]byte, 1)); err != io.EOF || n != 0 {
		t.Fatalf("idle connection at shutdown: read %d bytes, %v; want it closed", n, err)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) with a request in progress", err)
	case <-time.After(100 * time.Millisecond):
	}
	letGo()
	code, body, closes := readAnswer(t, busyBr, "GET")
	if code != 200 || body != "done" || !closes {
		t.Errorf("answer in progress at shutdown: %d %q, closes %v; want 200 \"done\" with Connection: close", code, body, closes)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown still waiting 5 s after the last request finished")
	}
}

// plainInFlight counts the plain loop's connections with a request in progress.
func plainInFlight(p *Proxy) int {
	p.plain.mu.Lock()
	defer p.plain.mu.Unlock()
	n := 0
	for pc := range p.plain.conns {
		pc.mu.Lock()
		if pc.ctx != nil {
			n++
		}
		pc.mu.Unlock()
	}
	return n
}

// TestParsePlainAsNetHTTP: a request the plain loop serves reaches the handler as
// net/http's server hands it over: the same method, URL, protocol, header map (no
// Host in it), Host, Close and length, for each head the loop accepts.
func TestParsePlainAsNetHTTP(t *testing.T) {
	got := make(chan *http.Request, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r
	}))
	defer srv.Close()
	heads := []string{
		"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
		"GET http://a.test:8080/p/q?x=1&y=%20#f HTTP/1.1\r\nHost: other\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
		"HEAD http://A.Test/%7Euser HTTP/1.1\r\nhost: a.test\r\nx-lower: v\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n",
		"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, close\r\n\r\n",
		"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nConnection: X-A\r\nX-A: 1\r\n\r\n",
		"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nPragma: no-cache\r\n\r\n",
		"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\n\r\n",
		"DELETE http://a.test/x HTTP/1.1\r\nHost: a.test\r\nX-Spaces:   padded\t \r\nX-Empty:\r\n\r\n",
		"GET http://a.test/ HTTP/1.1\nHost: a.test\nX-Bare-LF: 1\n\n",
		"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX-Fold: a\r\n b\r\n\r\n",
		"GET http://[::1]:80/ HTTP/1.1\r\nHost: [::1]:80\r\nX-UTF8: h\xc3\xa9\r\n\r\n",
		"OPTIONS http://a.test/ HTTP/1.1\r\nHost: a.test\r\nAccept-Encoding: gzip\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
	}
	served := 0
	for _, head := range heads {
		r := parsePlain([]byte(head))
		if r == nil {
			continue
		}
		served++
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(head))
		var want *http.Request
		select {
		case want = <-got:
		case <-time.After(5 * time.Second):
			c.Close()
			t.Fatalf("net/http's server did not pass on %q, which the plain loop serves", head)
		}
		c.Close()
		type view struct {
			Method, URL, Proto, Host, RequestURI string
			Header                               http.Header
			Close                                bool
			ContentLength                        int64
			TransferEncoding                     []string
		}
		of := func(r *http.Request) view {
			return view{r.Method, r.URL.String(), r.Proto, r.Host, r.RequestURI, r.Header, r.Close, r.ContentLength, r.TransferEncoding}
		}
		if g, w := of(r), of(want); !reflect.DeepEqual(g, w) {
			t.Errorf("%q:\nthe plain loop has %+v\nnet/http's server %+v", head, g, w)
		}
	}
	if served < len(heads)/2 {
		t.Fatalf("the plain loop serves %d of the %d heads; the test compares too little", served, len(heads))
	}
}
