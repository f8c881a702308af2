package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egressd/egressd/policy"
)

// rawOrigin is a loopback TCP server whose every connection is served by handle,
// so that a test says byte for byte what the origin answers. It counts connections.
type rawOrigin struct {
	ln    net.Listener
	conns atomic.Int64
}

func startRawOrigin(t *testing.T, handle func(c net.Conn, br *bufio.Reader)) *rawOrigin {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := &rawOrigin{ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			o.conns.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				handle(c, bufio.NewReader(c))
			}()
		}
	}()
	return o
}

func (o *rawOrigin) addr() string { return o.ln.Addr().String() }

// serveN answers up to n requests on a connection with answer(i), then returns
// (closing the connection).
func serveN(n int, answer func(r *http.Request, i int) string) func(net.Conn, *bufio.Reader) {
	return func(c net.Conn, br *bufio.Reader) {
		for i := 0; i < n; i++ {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, r.Body)
			if _, err := io.WriteString(c, answer(r, i)); err != nil {
				return
			}
		}
	}
}

func okAnswer(body string) string {
	return "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

// syncBuffer is a bytes.Buffer safe for the logger's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// serveProxy serves a Proxy made with opts on loopback, with a policy that allows
// targets (loopback addresses), and returns it and its address.
func serveProxy(tb testing.TB, opts Options, targets ...string) (*Proxy, string) {
	tb.Helper()
	m := compileRules(tb, targets...)
	p, err := New(opts)
	if err != nil {
		tb.Fatal(err)
	}
	p.SetPolicy(m)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go p.Serve(ln)
	tb.Cleanup(p.close)
	return p, ln.Addr().String()
}

// compileRules compiles a policy of the given rules.
func compileRules(tb testing.TB, texts ...string) *policy.Matcher {
	tb.Helper()
	var rules []policy.Rule
	for _, text := range texts {
		r, err := policy.ParseRule(text)
		if err != nil {
			tb.Fatal(err)
		}
		rules = append(rules, r)
	}
	m, problems := policy.Compile(rules, policy.Options{})
	if len(problems) > 0 {
		tb.Fatal(problems)
	}
	return m
}

// testProxy serves a Proxy on loopback that allows targets, and returns an HTTP
// client that uses it, and the access log.
func testProxy(t *testing.T, targets ...string) (*Proxy, *http.Client, *syncBuffer) {
	t.Helper()
	log := &syncBuffer{}
	p, addr := serveProxy(t, Options{Logger: slog.New(slog.NewJSONHandler(log, nil))}, targets...)
	u, _ := url.Parse("http://" + addr)
	tr := &http.Transport{Proxy: http.ProxyURL(u), DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return p, &http.Client{Transport: tr, Timeout: 10 * time.Second}, log
}

// originsKept is how many origins the proxy keeps connections to.
func originsKept(p *Proxy) int {
	p.upstreams.mu.Lock()
	defer p.upstreams.mu.Unlock()
	return len(p.upstreams.idle)
}

func get(t *testing.T, c *http.Client, method, u string, body io.Reader) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, u, err)
	}
	return resp, string(b)
}

// TestHTTPBodies sends requests down both upstream paths (the synchronous one for
// bodiless GET and HEAD, the Transport for a POST) with answers around the copy
// buffer's size, and checks the bodies and the access log's byte counts.
func TestHTTPBodies(t *testing.T) {
	for _, size := range []int{0, 1, 32<<10 + 1, 1 << 20} {
		body := strings.Repeat("b", size)
		origin := startRawOrigin(t, serveN(100, func(r *http.Request, _ int) string {
			if r.Method == http.MethodHead {
				return "HTTP/1.1 200 OK\r\nContent-Length: " + strconv.Itoa(size) + "\r\n\r\n"
			}
			return okAnswer(body)
		}))
		_, client, log := testProxy(t, origin.addr())
		for _, method := range []string{http.MethodGet, http.MethodHead, http.MethodPost} {
			t.Run(fmt.Sprintf("%s_%d", method, size), func(t *testing.T) {
				var reqBody io.Reader
				if method == http.MethodPost {
					reqBody = strings.NewReader("request body")
				}
				resp, got := get(t, client, method, "http://"+origin.addr()+"/x", reqBody)
				want := body
				if method == http.MethodHead {
					want = ""
				}
				if resp.StatusCode != http.StatusOK || got != want {
					t.Errorf("got %d with %d bytes; want 200 with %d", resp.StatusCode, len(got), len(want))
				}
				wantUp := 0
				if reqBody != nil {
					wantUp = len("request body")
				}
				wantLog := fmt.Sprintf(`"method":"%s","target":"%s","decision":"allow","reason":"allowed","status":200,"bytes_up":%d,"bytes_down":%d`,
					method, origin.addr(), wantUp, len(want))
				if !waitFor(func() bool { return strings.Contains(log.String(), wantLog) }) {
					t.Errorf("access log lacks %s:\n%s", wantLog, log.String())
				}
			})
		}
	}
}

// waitFor polls cond for up to 2 s: the access log line is written after the answer.
func waitFor(cond func() bool) bool {
	for i := 0; i < 200; i++ {
		if cond() {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

func TestUpstreamConnectionReuse(t *testing.T) {
	tests := []struct {
		name      string
		answer    string
		wantConns int64
	}{
		{"kept", okAnswer("hello"), 1},
		{"Connection: close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello", 5},
		{"HTTP/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", 5},
		{"103 Early Hints first", "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n" + okAnswer("hello"), 1},
		{"bytes after the answer", okAnswer("hello") + "junk", 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			origin := startRawOrigin(t, serveN(100, func(*http.Request, int) string { return tt.answer }))
			_, client, _ := testProxy(t, origin.addr())
			for i := 0; i < 5; i++ {
				resp, got := get(t, client, http.MethodGet, "http://"+origin.addr()+"/", nil)
				if resp.StatusCode != http.StatusOK || got != "hello" {
					t.Fatalf("request %d: got %d %q; want 200 %q", i, resp.StatusCode, got, "hello")
				}
			}
			if got := origin.conns.Load(); got != tt.wantConns {
				t.Errorf("origin saw %d connections for 5 requests; want %d", got, tt.wantConns)
			}
		})
	}
}

// TestUpstreamClosedWhileIdle: an origin that closes a kept connection without
// saying so beforehand costs the next request nothing but a new connection.
func TestUpstreamClosedWhileIdle(t *testing.T) {
	origin := startRawOrigin(t, serveN(1, func(_ *http.Request, _ int) string { return okAnswer("hello") }))
	_, client, _ := testProxy(t, origin.addr())
	for i := 0; i < 3; i++ {
		resp, got := get(t, client, http.MethodGet, "http://"+origin.addr()+"/", nil)
		if resp.StatusCode != http.StatusOK || got != "hello" {
			t.Fatalf("request %d: got %d %q; want 200 %q", i, resp.StatusCode, got, "hello")
		}
		time.Sleep(20 * time.Millisecond) // let the origin's close arrive
	}
	if got := origin.conns.Load(); got != 3 {
		t.Errorf("origin saw %d connections; want 3 (one per request, each retried once)", got)
	}
}

// TestUpstreamBodyNotReadToEnd: a connection whose answer was not read to its end
// is closed, never kept for another request.
func TestUpstreamBodyNotReadToEnd(t *testing.T) {
	big := strings.Repeat("z", 1<<20)
	origin := startRawOrigin(t, serveN(10, func(*http.Request, int) string { return okAnswer(big) }))
	p, _, _ := testProxy(t, origin.addr())
	req, _ := http.NewRequest(http.MethodGet, "http://"+origin.addr()+"/", nil)
	resp, err := p.upstreams.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Read(make([]byte, 100))
	resp.Body.Close()
	if kept := originsKept(p); kept != 0 {
		t.Errorf("%d origins have kept connections after a body closed early; want 0", kept)
	}
	resp, err = p.upstreams.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if len(b) != len(big) || origin.conns.Load() != 2 {
		t.Errorf("second request: %d bytes on connection %d; want %d on a new connection (2)", len(b), origin.conns.Load(), len(big))
	}
}

// TestUpstreamCanceled: a client that goes away stops the wait for an origin that
// never answers.
func TestUpstreamCanceled(t *testing.T) {
	origin := startRawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		http.ReadRequest(br)
		io.Copy(io.Discard, br) // never answers
	})
	p, _, _ := testProxy(t, origin.addr())
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+origin.addr()+"/", nil)
	done := make(chan error, 1)
	go func() {
		_, err := p.upstreams.RoundTrip(req)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Error("RoundTrip with no answer returned no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RoundTrip still waiting 5 s after its request was canceled")
	}
}

// TestUpstreamIdleTimeout: a connection kept longer than the idle timeout is not
// used again; prune closes it.
func TestUpstreamIdleTimeout(t *testing.T) {
	origin := startRawOrigin(t, serveN(10, func(*http.Request, int) string { return okAnswer("hello") }))
	p, _, _ := testProxy(t, origin.addr())
	var now atomic.Int64
	now.Store(time.Unix(1000, 0).UnixNano())
	p.upstreams.now = func() time.Time { return time.Unix(0, now.Load()) }
	p.upstreams.idleTimeout = time.Minute
	req, _ := http.NewRequest(http.MethodGet, "http://"+origin.addr()+"/", nil)
	roundTrip := func() {
		t.Helper()
		resp, err := p.upstreams.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	roundTrip()
	now.Add(int64(30 * time.Second))
	roundTrip() // kept connection, 30 s idle: reused
	now.Add(int64(61 * time.Second))
	roundTrip() // 61 s idle: a new connection
	if got := origin.conns.Load(); got != 2 {
		t.Errorf("origin saw %d connections; want 2", got)
	}
	now.Add(int64(61 * time.Second))
	p.upstreams.prune()
	if kept := originsKept(p); kept != 0 {
		t.Errorf("after prune %d origins have kept connections; want 0", kept)
	}
}

// TestUpstreamIdleBound: no more connections are kept than the bound in all,
// whatever the number of origins.
func TestUpstreamIdleBound(t *testing.T) {
	var origins []*rawOrigin
	var addrs []string
	for i := 0; i < 3; i++ {
		o := startRawOrigin(t, serveN(10, func(*http.Request, int) string { return okAnswer("hello") }))
		origins = append(origins, o)
		addrs = append(addrs, o.addr())
	}
	p, _, _ := testProxy(t, addrs...)
	p.upstreams.maxIdleAll = 2
	for _, a := range addrs {
		req, _ := http.NewRequest(http.MethodGet, "http://"+a+"/", nil)
		resp, err := p.upstreams.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	p.upstreams.mu.Lock()
	kept := 0
	for _, list := range p.upstreams.idle {
		kept += len(list)
	}
	count := p.upstreams.idleCount
	p.upstreams.mu.Unlock()
	if kept != 2 || count != 2 {
		t.Errorf("kept %d connections (counted %d) to 3 origins with a bound of 2; want 2", kept, count)
	}
}

// TestUpstreamNoAnswer: an origin that takes the request and closes without an
// answer gets the client a 502 that says so, on either upstream path.
func TestUpstreamNoAnswer(t *testing.T) {
	origin := startRawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		if r, err := http.ReadRequest(br); err == nil {
			io.Copy(io.Discard, r.Body)
		}
	})
	_, client, _ := testProxy(t, origin.addr())
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		t.Run(method, func(t *testing.T) {
			resp, body := get(t, client, method, "http://"+origin.addr()+"/", strings.NewReader(""))
			want := "egressd: no valid answer from " + origin.addr() + ": "
			if resp.StatusCode != http.StatusBadGateway || !strings.HasPrefix(body, want) {
				t.Errorf("got %d %q; want 502 starting %q", resp.StatusCode, body, want)
			}
		})
	}
}
