package e2e

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestHTTPThroughProxy(t *testing.T) {
	t.Parallel()
	origin := httpOrigin(t)
	op := port(t, origin.Listener.Addr().String())
	d := startDaemon(t, daemonConfig{files: map[string]string{
		"allow.d/a.txt": "localhost:" + op + "\n127.0.0.1:" + op + "\n",
	}})

	t.Run("allowed with -x", func(t *testing.T) {
		out, code := curl(t, nil, "-x", d.proxyURL(), "http://localhost:"+op+"/hello")
		var e echoed
		if code != 0 || json.Unmarshal([]byte(out), &e) != nil || e.Path != "/hello" {
			t.Fatalf("curl -x allowed = exit %d, %q; want the origin's echo of /hello", code, out)
		}
	})
	t.Run("allowed with HTTP_PROXY", func(t *testing.T) {
		out, code := curl(t, []string{"http_proxy=" + d.proxyURL(), "HTTP_PROXY=" + d.proxyURL()}, "http://127.0.0.1:"+op+"/env")
		if code != 0 || !strings.Contains(out, `"path":"/env"`) {
			t.Fatalf("curl with http_proxy = exit %d, %q; want the origin's echo", code, out)
		}
	})
	t.Run("denied", func(t *testing.T) {
		out, code := curl(t, nil, "-x", d.proxyURL(), "-i", "http://denied.invalid/x")
		if code != 0 {
			t.Fatalf("curl exit %d", code)
		}
		for _, want := range []string{
			"HTTP/1.1 403 Forbidden",
			"X-Egressd-Denied: not on the allowlist",
			"Content-Type: text/plain",
			"egressd: denied denied.invalid:80: not on the allowlist; hint: add denied.invalid to an allowlist file",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("denied response lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("port rule", func(t *testing.T) {
		out, _ := curl(t, nil, "-x", d.proxyURL(), "-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code} ", "http://localhost:"+op+"/", "http://localhost:81/")
		if out != "200 403 " {
			t.Errorf("allowed port, other port = %q; want \"200 403 \"", out)
		}
	})
	t.Run("host header is the URI's", func(t *testing.T) {
		// The policy decides on the URI; the client's Host header neither allows nor
		// reaches the origin.
		out, code := curl(t, nil, "-x", d.proxyURL(), "-H", "Host: evil.invalid", "http://localhost:"+op+"/h")
		var e echoed
		if code != 0 || json.Unmarshal([]byte(out), &e) != nil || e.Host != "localhost:"+op {
			t.Fatalf("origin saw Host %q (exit %d, %q); want localhost:%s", e.Host, code, out, op)
		}
		out, _ = curl(t, nil, "-x", d.proxyURL(), "-H", "Host: localhost:"+op, "-o", "/dev/null", "-w", "%{http_code}", "http://denied.invalid/")
		if out != "403" {
			t.Errorf("denied URI with an allowed Host header = %s; want 403", out)
		}
	})
	t.Run("hop-by-hop headers", func(t *testing.T) {
		out, code := curl(t, nil, "-x", d.proxyURL(), "-i",
			"-H", "Connection: X-Private", "-H", "X-Private: secret", "-H", "Keep-Alive: timeout=9",
			"-H", "TE: trailers", "-H", "Proxy-Authorization: Basic dTpw", "-H", "X-Kept: yes",
			"http://localhost:"+op+"/hop")
		if code != 0 {
			t.Fatalf("curl exit %d", code)
		}
		head, body, _ := strings.Cut(out, "\r\n\r\n")
		var e echoed
		if err := json.Unmarshal([]byte(body), &e); err != nil {
			t.Fatalf("origin answer %q: %v", body, err)
		}
		for _, h := range []string{"X-Private", "Keep-Alive", "Te", "Proxy-Authorization", "Proxy-Connection"} {
			if _, ok := e.Header[h]; ok {
				t.Errorf("origin received hop-by-hop header %s", h)
			}
		}
		if e.Header["X-Kept"] == nil {
			t.Errorf("origin did not receive X-Kept; headers %v", e.Header)
		}
		if strings.Contains(head, "X-Hop") || strings.Contains(head, "Keep-Alive") {
			t.Errorf("client received the origin's hop-by-hop headers:\n%s", head)
		}
	})
	t.Run("origin form is not proxied", func(t *testing.T) {
		out, _ := curl(t, nil, "-o", "/dev/null", "-w", "%{http_code}", "http://"+d.proxy+"/healthz")
		if out != "404" {
			t.Errorf("GET /healthz on the proxy port = %s; want 404", out)
		}
	})
	t.Run("refused upstream is 502", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		closed := ln.Addr().String()
		ln.Close()
		d2 := startDaemon(t, daemonConfig{files: map[string]string{"allow.d/a.txt": closed + "\n"}})
		out, _ := curl(t, nil, "-x", d2.proxyURL(), "-w", "\n%{http_code}", "http://"+closed+"/")
		if !strings.HasSuffix(out, "\n502") || !strings.Contains(out, "connection to "+closed+" refused") {
			t.Errorf("refused upstream = %q; want 502 naming %s", out, closed)
		}
	})
}

func TestConnectThroughProxy(t *testing.T) {
	t.Parallel()
	origin, caFile := tlsOrigin(t)
	op := port(t, origin.Listener.Addr().String())
	d := startDaemon(t, daemonConfig{
		dns:   "  allow_private: [127.0.0.0/8]\n", // localhost is loopback: the guard would refuse it
		files: map[string]string{"allow.d/a.txt": "localhost:" + op + "\n"},
	})

	t.Run("allowed with -x", func(t *testing.T) {
		out, code := curl(t, nil, "-x", d.proxyURL(), "--cacert", caFile, "https://localhost:"+op+"/tls")
		if code != 0 || !strings.Contains(out, `"path":"/tls"`) {
			t.Fatalf("curl https through CONNECT = exit %d, %q", code, out)
		}
	})
	t.Run("allowed with HTTPS_PROXY", func(t *testing.T) {
		out, code := curl(t, []string{"HTTPS_PROXY=" + d.proxyURL(), "https_proxy=" + d.proxyURL()}, "--cacert", caFile, "https://localhost:"+op+"/env")
		if code != 0 || !strings.Contains(out, `"path":"/env"`) {
			t.Fatalf("curl with HTTPS_PROXY = exit %d, %q", code, out)
		}
	})
	t.Run("denied before any tunnel", func(t *testing.T) {
		out, _ := curl(t, nil, "-x", d.proxyURL(), "--cacert", caFile, "-w", "%{http_connect}", "-o", "/dev/null", "https://127.0.0.1:"+op+"/")
		if out != "403" {
			t.Errorf("CONNECT to an unlisted target: proxy answered %q; want 403", out)
		}
	})
	t.Run("403 body, header and close", func(t *testing.T) {
		c, err := net.Dial("tcp", d.proxy)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "CONNECT localhost:22 HTTP/1.1\r\nHost: localhost:22\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 403 || resp.Header.Get("X-Egressd-Denied") != "port not allowed" ||
			!strings.HasPrefix(string(body), "egressd: denied localhost:22: port not allowed; hint: localhost is allowed on port "+op+" only") {
			t.Errorf("CONNECT localhost:22 = %d %q %q", resp.StatusCode, resp.Header.Get("X-Egressd-Denied"), body)
		}
		if n, err := c.Read(make([]byte, 1)); err == nil {
			t.Errorf("connection still open after the 403 (read %d bytes)", n)
		}
	})
	t.Run("early bytes are kept", func(t *testing.T) {
		// A client that pipelines data after CONNECT, before the 200, loses nothing.
		echo := echoOrigin(t)
		d2 := startDaemon(t, daemonConfig{files: map[string]string{"allow.d/a.txt": echo + "\n"}})
		c, err := net.Dial("tcp", d2.proxy)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "CONNECT "+echo+" HTTP/1.1\r\nHost: "+echo+"\r\n\r\nearly-bytes")
		want := "HTTP/1.1 200 Connection established\r\n\r\nearly-bytes"
		got := make([]byte, len(want))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != want {
			t.Errorf("read %q, %v; want %q", got, err, want)
		}
	})
}

func TestTunnelHalfClose(t *testing.T) {
	t.Parallel()
	// The origin reads until the client half-closes, then answers: that works only if
	// the proxy passes the FIN on and keeps the other direction open.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		io.WriteString(c, "got "+string(b))
	}()
	d := startDaemon(t, daemonConfig{files: map[string]string{"allow.d/a.txt": ln.Addr().String() + "\n"}})
	c := openTunnel(t, d.proxy, ln.Addr().String())
	defer c.Close()
	io.WriteString(c, "request")
	c.(*net.TCPConn).CloseWrite()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "got request" {
		t.Errorf("after half-close read %q, %v; want %q", got, err, "got request")
	}
	line := d.waitLog(`"method":"CONNECT"`, 5*time.Second)
	for _, want := range []string{`"bytes_up":7`, `"bytes_down":11`, `"closed":"done"`, `"decision":"allow"`} {
		if !strings.Contains(line, want) {
			t.Errorf("access log line lacks %s: %s", want, line)
		}
	}
}

func TestRequestFraming(t *testing.T) {
	t.Parallel()
	origin := httpOrigin(t)
	target := origin.Listener.Addr().String()
	d := startDaemon(t, daemonConfig{files: map[string]string{"allow.d/a.txt": target + "\n"}})
	send := func(t *testing.T, raw string) (*http.Response, string, net.Conn) {
		t.Helper()
		c, err := net.Dial("tcp", d.proxy)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, raw)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body), &bufConn{c, br}
	}
	t.Run("conflicting Content-Length is 400", func(t *testing.T) {
		resp, _, _ := send(t, "POST http://"+target+"/ HTTP/1.1\r\nHost: "+target+"\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde")
		if resp.StatusCode != 400 {
			t.Errorf("status = %d; want 400", resp.StatusCode)
		}
	})
	t.Run("Content-Length with Transfer-Encoding", func(t *testing.T) {
		resp, body, c := send(t, "POST http://"+target+"/te HTTP/1.1\r\nHost: "+target+"\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
		var e echoed
		if err := json.Unmarshal([]byte(body), &e); err != nil {
			t.Fatalf("status %d body %q", resp.StatusCode, body)
		}
		if e.Body != "hello" || e.Header["Content-Length"] != nil {
			t.Errorf("origin got body %q and Content-Length %v; want the chunked body and no Content-Length", e.Body, e.Header["Content-Length"])
		}
		if !resp.Close {
			t.Errorf("response does not close the connection")
		}
		if n, err := c.Read(make([]byte, 1)); err == nil {
			t.Errorf("connection still open after an ambiguous request (read %d bytes)", n)
		}
	})
}

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func TestNoProxyLoop(t *testing.T) {
	t.Parallel()
	// 127.0.0.0/8 on every port is allowed; still, the proxy never talks to its own
	// listeners (the proxy itself and the metrics listener).
	d := startDaemon(t, daemonConfig{
		proxy: "  allowed_ports: [1, 65535]\n",
		files: map[string]string{"allow.d/a.txt": "127.0.0.0/8\n"},
	})
	for _, target := range []string{d.metrics, d.proxy} {
		hp := target
		// The allowlist names the listener ports: rewrite the file so they are allowed.
		writeFile(t, d.path("allow.d/a.txt"), "127.0.0.0/8:"+port(t, d.metrics)+"\n127.0.0.0/8:"+port(t, d.proxy)+"\n")
		d.waitLog(`"rules":2`, 5*time.Second)
		out, _ := curl(t, nil, "-x", d.proxyURL(), "-i", "http://"+hp+"/metrics")
		if !strings.Contains(out, "403 Forbidden") || !strings.Contains(out, "X-Egressd-Denied: proxy loop") {
			t.Errorf("GET http://%s through the proxy:\n%s\nwant 403 proxy loop", hp, out)
		}
		out, _ = curl(t, nil, "-x", d.proxyURL(), "-w", "%{http_connect}", "-o", "/dev/null", "https://"+hp+"/")
		if out != "403" {
			t.Errorf("CONNECT %s through the proxy = %q; want 403", hp, out)
		}
	}
}
