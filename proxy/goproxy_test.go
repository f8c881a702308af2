package proxy

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
)

// The goproxy behaviours that goproxy.go lists, pinned.

// TestGoproxyOriginFormIsLocal: a request in origin form reaches the local handler.
func TestGoproxyOriginFormIsLocal(t *testing.T) {
	local := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "local "+r.URL.Path) })
	_, addr := serveProxy(t, Options{LocalHandler: local})
	_, br := rawRequest(t, addr, "GET /v1/x HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "local /v1/x" {
		t.Errorf("origin-form request answered %q; want the local handler's", body)
	}
}

// TestGoproxyKeepsContentLength: a HEAD answer keeps the origin's Content-Length, so
// the RoundTripper's body reaches goproxy unreplaced and goproxy copies the header.
func TestGoproxyKeepsContentLength(t *testing.T) {
	origin := startRawOrigin(t, serveN(1, func(*http.Request, int) string {
		return "HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n"
	}))
	_, addr := serveProxy(t, Options{}, origin.addr())
	_, br := rawRequest(t, addr, "HEAD http://"+origin.addr()+"/ HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodHead})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header.Get("Content-Length") != "12345" {
		t.Errorf("HEAD answer's Content-Length = %q; want 12345", resp.Header.Get("Content-Length"))
	}
}

// TestGoproxyConnectEarlyBytes: bytes a client sends right behind its CONNECT reach
// the origin, through our Hijack.
func TestGoproxyConnectEarlyBytes(t *testing.T) {
	origin := startRawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		line, _ := br.ReadString('\n')
		io.WriteString(c, "echo "+line)
	})
	_, addr := serveProxy(t, Options{}, origin.addr())
	_, br := rawRequest(t, addr, "CONNECT "+origin.addr()+" HTTP/1.1\r\nHost: x\r\n\r\nearly\n")
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v, %v", resp, err)
	}
	if got, _ := br.ReadString('\n'); got != "echo early\n" {
		t.Errorf("through the tunnel: %q; want the early bytes echoed", got)
	}
}

// TestOneLogLinePerExchange: each request and tunnel is finished exactly once,
// whatever its outcome, and gives back its connection slot.
func TestOneLogLinePerExchange(t *testing.T) {
	origin := startRawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		r, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if r.Method == http.MethodConnect {
			return
		}
		io.Copy(io.Discard, r.Body)
		io.WriteString(c, okAnswer("ok"))
	})
	deadAddr := closedPort(t)
	log := &syncBuffer{}
	p, addr := serveProxy(t, Options{Logger: slog.New(slog.NewJSONHandler(log, nil))}, origin.addr(), deadAddr)
	msgs := []string{
		"GET http://" + origin.addr() + "/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		"POST http://" + origin.addr() + "/ HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
		"GET http://denied.invalid/ HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET http://" + deadAddr + "/ HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET ftp://x/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		"CONNECT denied.invalid:443 HTTP/1.1\r\nHost: x\r\n\r\n",
		"CONNECT " + deadAddr + " HTTP/1.1\r\nHost: x\r\n\r\n",
		"CONNECT " + origin.addr() + " HTTP/1.1\r\nHost: x\r\n\r\n",
	}
	for _, msg := range msgs {
		c, br := rawRequest(t, addr, msg)
		resp, err := http.ReadResponse(br, &http.Request{Method: strings.Fields(msg)[0]})
		if err != nil {
			t.Fatalf("%q: %v", msg, err)
		}
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(msg, "CONNECT") {
			io.ReadAll(resp.Body) // a tunnel's answer has no end but the tunnel's
		}
		c.Close()
	}
	if !waitFor(func() bool { return strings.Count(log.String(), `"msg":"request"`) == len(msgs) && p.conns.Load() == 0 }) {
		t.Errorf("%d access log lines, %d connections still counted; want %d and 0:\n%s",
			strings.Count(log.String(), `"msg":"request"`), p.conns.Load(), len(msgs), log.String())
	}
}

// TestProxyHeadersNotForwarded: what a client says to its proxy stays with the proxy.
func TestProxyHeadersNotForwarded(t *testing.T) {
	got := make(chan http.Header, 1)
	origin := startRawOrigin(t, serveN(1, func(r *http.Request, _ int) string {
		got <- r.Header
		return okAnswer("ok")
	}))
	_, addr := serveProxy(t, Options{}, origin.addr())
	_, br := rawRequest(t, addr, "GET http://"+origin.addr()+"/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic c2VjcmV0\r\n"+
		"Proxy-Connection: keep-alive\r\nConnection: X-Private, keep-alive\r\nX-Private: 1\r\nX-Kept: 1\r\n\r\n")
	if _, err := http.ReadResponse(br, nil); err != nil {
		t.Fatal(err)
	}
	h := <-got
	for _, name := range []string{"Proxy-Authorization", "Proxy-Connection", "Connection", "X-Private"} {
		if v := h.Get(name); v != "" {
			t.Errorf("origin received %s: %q", name, v)
		}
	}
	if h.Get("X-Kept") != "1" {
		t.Errorf("origin lacks X-Kept: %v", h)
	}
}
