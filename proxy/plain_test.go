package proxy

import (
	"bufio"
	"io"
	"log"
	"net"
	"net/http"
	"regexp"
	"strings"
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
		pc.replay = replayReader{c: c}
		pc.br = bufio.NewReader(&pc.replay)
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
