package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestParseConnect: which first requests the accept loop serves itself. Everything
// else goes to net/http.
func TestParseConnect(t *testing.T) {
	tests := []struct {
		name, head string
		ours       bool
	}{
		{"plain", "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n", true},
		{"bare LF", "CONNECT a.test:443 HTTP/1.1\nHost: a.test:443\n\n", true},
		{"no Host", "CONNECT a.test:443 HTTP/1.1\r\n\r\n", true},
		{"HTTP/1.0", "CONNECT a.test:443 HTTP/1.0\r\n\r\n", true},
		{"other headers", "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test\r\nUser-Agent: curl/8\r\nProxy-Connection: keep-alive\r\n\r\n", true},
		{"GET", "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", false},
		{"lower case method", "connect a.test:443 HTTP/1.1\r\n\r\n", false},
		{"HTTP/2.0", "CONNECT a.test:443 HTTP/2.0\r\n\r\n", false},
		{"two Host headers", "CONNECT a.test:443 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", false},
		{"bad Host", "CONNECT a.test:443 HTTP/1.1\r\nHost: a b\r\n\r\n", false},
		{"bad Host, lower case", "CONNECT a.test:443 HTTP/1.1\nhost:a{b\n\n", false},
		{"bad header name", "CONNECT a.test:443 HTTP/1.1\r\nBad Name: x\r\n\r\n", false},
		{"bad header value", "CONNECT a.test:443 HTTP/1.1\r\nX: a\x00b\r\n\r\n", false},
		{"Expect", "CONNECT a.test:443 HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", false},
		{"body", "CONNECT a.test:443 HTTP/1.1\r\nContent-Length: 3\r\n\r\n", false},
		{"chunked", "CONNECT a.test:443 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", false},
		{"folded header", "CONNECT a.test:443 HTTP/1.1\r\n folded\r\n\r\n", false},
		{"no version", "CONNECT a.test:443\r\n\r\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			end := headEnd([]byte(tt.head), 0)
			if end != len(tt.head) {
				t.Fatalf("headEnd = %d; want %d", end, len(tt.head))
			}
			if r := parseConnect([]byte(tt.head)); (r != nil) != tt.ours {
				t.Errorf("parseConnect: %v; want the accept loop to serve it: %v", r, tt.ours)
			}
		})
	}
}

// TestReadHead: the accept loop stops reading as soon as the bytes cannot be a
// CONNECT, and reads a head sent in pieces to its end.
func TestReadHead(t *testing.T) {
	tests := []struct {
		name   string
		pieces []string
		n, end int
	}{
		{"whole", []string{"CONNECT a:1 HTTP/1.1\r\n\r\nearly"}, 29, 24},
		{"in pieces", []string{"CONN", "ECT a:1 HTTP/1.1\r\n", "\r", "\n"}, 24, 24},
		{"a byte at a time", strings.Split("CONNECT a:1 HTTP/1.1\r\nX: y\r\n\r\n", ""), 30, 30},
		{"a byte at a time, bare LF", strings.Split("CONNECT a:1 HTTP/1.1\nX: y\n\n", ""), 27, 27},
		{"not CONNECT", []string{"GET / HTTP/1.1\r\n\r\n"}, 18, 0},
		{"not CONNECT at once", []string{"CONNX", "never read"}, 5, 0},
		{"too long", []string{"CONNECT a:1 HTTP/1.1\r\nX: " + strings.Repeat("a", headSize)}, headSize, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := net.Pipe()
			defer server.Close()
			go func() {
				for _, p := range tt.pieces {
					if _, err := io.WriteString(client, p); err != nil {
						return
					}
				}
			}()
			server.SetReadDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, headSize)
			n, end, err := readHead(server, buf)
			client.Close()
			if n != tt.n || end != tt.end || err != nil {
				t.Errorf("readHead = %d, %d, %v; want %d, %d, nil", n, end, err, tt.n, tt.end)
			}
		})
	}
}

// TestFirstRequestAnswersAsNetHTTP: a CONNECT sent as a connection's first request
// (which the accept loop reads) gets the same answer as the same CONNECT sent after a
// GET on a kept connection (which net/http and goproxy read), for well-formed,
// malformed and refused requests alike; and an allowed one is a working tunnel.
func TestFirstRequestAnswersAsNetHTTP(t *testing.T) {
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	defer web.Close()
	echo := startRawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		line, _ := br.ReadString('\n')
		io.WriteString(c, "echo "+line)
	})
	webAddr := web.Listener.Addr().String()
	_, addr := serveProxy(t, Options{ReadHeaderTimeout: 2 * time.Second}, webAddr, echo.addr())
	e := echo.addr()
	tests := []struct {
		name, head string
		status     int
	}{
		{"plain", "CONNECT " + e + " HTTP/1.1\r\nHost: " + e + "\r\n\r\n", 200},
		{"bare LF", "CONNECT " + e + " HTTP/1.1\nHost: " + e + "\n\n", 200},
		{"no Host", "CONNECT " + e + " HTTP/1.1\r\n\r\n", 200},
		{"HTTP/1.0", "CONNECT " + e + " HTTP/1.0\r\n\r\n", 200},
		{"a head larger than the accept loop reads", "CONNECT " + e + " HTTP/1.1\r\nX-Pad: " + strings.Repeat("p", 2*headSize) + "\r\n\r\n", 200},
		{"denied", "CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n", 403},
		{"no port", "CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n", 400},
		{"bad Host", "CONNECT " + e + " HTTP/1.1\r\nHost: a b\r\n\r\n", 400},
		{"bad Host, lower case", "CONNECT " + e + " HTTP/1.1\r\nhost:a{b\r\n\r\n", 400},
		{"egressd.internal", "CONNECT egressd.internal:80 HTTP/1.1\r\n\r\n", 400},
		{"two Host headers", "CONNECT " + e + " HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
		{"bad header name", "CONNECT " + e + " HTTP/1.1\r\nBad Name: x\r\n\r\n", 400},
		{"Expect", "CONNECT " + e + " HTTP/1.1\r\nExpect: bogus\r\n\r\n", 417},
		{"HTTP/2.0", "CONNECT " + e + " HTTP/2.0\r\n\r\n", 505},
		{"head too large", "CONNECT " + e + " HTTP/1.1\r\nX-Pad: " + strings.Repeat("p", 80<<10) + "\r\n\r\n", 431},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first := connectStatus(t, addr, "", tt.head)
			later := connectStatus(t, addr, "GET http://"+webAddr+"/ HTTP/1.1\r\nHost: "+webAddr+"\r\n\r\n", tt.head)
			if first != later {
				t.Errorf("as the first request: %q; after a GET: %q", first, later)
			}
			if f := strings.Fields(first); len(f) < 2 || f[1] != strconv.Itoa(tt.status) {
				t.Errorf("status line %q; want %d", first, tt.status)
			}
		})
	}
}

// connectStatus sends before (a request whose answer it skips, on the same
// connection) and then head, and returns the status line of the answer to head; for a
// 200 it checks that the tunnel echoes a line.
func connectStatus(t *testing.T, addr, before, head string) string {
	t.Helper()
	c, br := rawRequest(t, addr, before)
	if before != "" {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("the request before: %v", err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	io.WriteString(c, head+"hello\n")
	status, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	status = strings.TrimRight(status, "\r\n")
	if strings.HasPrefix(status, "HTTP/1.1 200 ") || strings.HasPrefix(status, "HTTP/1.0 200 ") {
		for line := "x"; line != "\r\n" && line != "\n"; {
			if line, err = br.ReadString('\n'); err != nil {
				t.Fatalf("reading the 200's headers: %v", err)
			}
		}
		if got, err := br.ReadString('\n'); got != "echo hello\n" {
			t.Errorf("through the tunnel: %q, %v; want the echo", got, err)
		}
	}
	return status
}

// TestFirstRequestTimeout: a client that sends part of a CONNECT, or nothing, is
// closed with no answer at ReadHeaderTimeout, as net/http closes one, and gives its
// connection slot back.
func TestFirstRequestTimeout(t *testing.T) {
	p, addr := serveProxy(t, Options{ReadHeaderTimeout: 200 * time.Millisecond})
	for _, sent := range []string{"", "CONNECT 127.0.0.1:1 HTTP/1.1\r\n"} {
		c, br := rawRequest(t, addr, sent)
		start := time.Now()
		got, err := br.ReadString('\n')
		if err == nil || got != "" {
			t.Errorf("after %q: read %q, %v; want the connection closed with no answer", sent, got, err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("closed after %v; want about 200ms", d)
		}
		c.Close()
	}
	if !waitFor(func() bool { return p.conns.Load() == 0 }) {
		t.Errorf("%d connections still counted", p.conns.Load())
	}
}

// TestMaxConnections: past MaxConnections a CONNECT or a GET gets 503, whether it is
// the first request of its connection or not, and the tunnels in force go on.
func TestMaxConnections(t *testing.T) {
	e := startRawOrigin(t, echoLines("echo ")).addr()
	p, addr := serveProxy(t, Options{MaxConnections: 2}, e)
	for range 2 {
		if s := connectStatus(t, addr, "", "CONNECT "+e+" HTTP/1.1\r\n\r\n"); !strings.HasPrefix(s, "HTTP/1.1 200") {
			t.Fatalf("a tunnel under the limit: %q", s)
		}
	}
	if !waitFor(func() bool { return p.conns.Load() == 2 }) {
		t.Fatalf("%d connections counted; want 2", p.conns.Load())
	}
	for _, head := range []string{"CONNECT " + e + " HTTP/1.1\r\n\r\n", "GET http://" + e + "/ HTTP/1.1\r\nHost: x\r\n\r\n"} {
		_, br := rawRequest(t, addr, head)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%q past the limit: %v", head, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "too many connections") {
			t.Errorf("%q past the limit: %d %q; want 503, too many connections", head, resp.StatusCode, body)
		}
	}
}

// FuzzParseConnect: whatever a client sends first, reading it never panics, and a
// head the accept loop takes is a CONNECT that net/http's parser reads the same way.
func FuzzParseConnect(f *testing.F) {
	for _, s := range []string{
		"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
		"CONNECT a.test:443 HTTP/1.1\nHost: a b\n\n",
		"CONNECT [::1]:443 HTTP/1.0\r\n\r\nearly",
		"GET http://a.test/ HTTP/1.1\r\n\r\n",
		"CONNECT a.test:443 HTTP/1.1\r\n folded\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		end := headEnd(b, 0)
		if end == 0 {
			return
		}
		r := parseConnect(b[:end])
		if r == nil {
			return
		}
		again, err := http.ReadRequest(bufio.NewReader(strings.NewReader(string(b[:end]))))
		if err != nil || r.Method != http.MethodConnect || again.Method != r.Method || again.URL.Host != r.URL.Host || again.RequestURI != r.RequestURI {
			t.Errorf("took %q as CONNECT %q; net/http reads %v, %v", b[:end], r.URL.Host, again, err)
		}
	})
}

// echoLines is an origin that answers each line it reads with prefix and the line.
func echoLines(prefix string) func(net.Conn, *bufio.Reader) {
	return func(c net.Conn, br *bufio.Reader) {
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			io.WriteString(c, prefix+line)
		}
	}
}

// TestHandedOverHeadKeepsItsDeadline: a CONNECT head too long for the accept loop,
// sent slowly, is cut at ReadHeaderTimeout from the connection's start, not given a
// second one by net/http; the same connection, once its head is in, is not held to it.
func TestHandedOverHeadKeepsItsDeadline(t *testing.T) {
	e := startRawOrigin(t, echoLines("echo ")).addr()
	_, addr := serveProxy(t, Options{ReadHeaderTimeout: time.Second}, e)
	c, br := rawRequest(t, addr, "CONNECT "+e+" HTTP/1.1\r\nX-Pad: ")
	start := time.Now()
	done := make(chan struct{})
	go func() { // 512 bytes every 100 ms, for up to 4 s: past headSize after about 800 ms
		defer close(done)
		for i := 0; i < 40; i++ {
			if _, err := io.WriteString(c, strings.Repeat("p", 512)); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	br.ReadString('\n') // whatever comes, until the connection ends
	if d := time.Since(start); d > 1400*time.Millisecond {
		t.Errorf("a slow head was cut after %v; want about 1s (ReadHeaderTimeout)", d.Round(time.Millisecond))
	}
	c.Close()
	<-done

	// A long head sent at once: the tunnel outlives the header deadline.
	c, br = rawRequest(t, addr, "CONNECT "+e+" HTTP/1.1\r\nX-Pad: "+strings.Repeat("p", headSize+100)+"\r\n\r\n")
	if resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v, %v", resp, err)
	}
	time.Sleep(1200 * time.Millisecond)
	io.WriteString(c, "late\n")
	if got, err := br.ReadString('\n'); got != "echo late\n" {
		t.Errorf("through the tunnel after the header deadline: %q, %v", got, err)
	}
}
