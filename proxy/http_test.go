package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/egressd/egressd/dialer"
)

// closedPort returns a loopback address where nothing listens: connections to it
// are refused.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// rawRequest sends msg to the proxy on a new connection and returns the connection
// and a reader of its answers.
func rawRequest(t *testing.T, proxyAddr, msg string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialTimeout("tcp", proxyAddr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	return c, bufio.NewReader(c)
}

// TestStreamingAnswers: an answer without a Content-Length reaches the client piece
// by piece as the origin sends it. The origin sends the next line only once the
// client has the previous one, so an answer held back until it ends never arrives.
func TestStreamingAnswers(t *testing.T) {
	tests := []struct {
		name, head string
		frame      func(line string) string
		end        string
	}{
		{"chunked ndjson", "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n",
			func(l string) string { return fmt.Sprintf("%x\r\n%s\r\n", len(l), l) }, "0\r\n\r\n"},
		{"until close", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
			func(l string) string { return l }, ""},
		{"event stream", "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
			func(l string) string { return fmt.Sprintf("%x\r\n%s\r\n", len(l), l) }, "0\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := make(chan string, 5)
			origin := startRawOrigin(t, func(c net.Conn, br *bufio.Reader) {
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, tt.head)
				for i := range 5 {
					line := fmt.Sprintf("{\"n\":%d}\n", i)
					io.WriteString(c, tt.frame(line))
					select {
					case g := <-got:
						if g != line {
							return
						}
					case <-time.After(3 * time.Second):
						return // the client never saw the line: held back
					}
				}
				io.WriteString(c, tt.end)
			})
			_, client, _ := testProxy(t, origin.addr())
			resp, err := client.Get("http://" + origin.addr() + "/watch")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			for i := range 5 {
				start := time.Now()
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatalf("line %d: %v (after %v): the answer was held back", i, err, time.Since(start))
				}
				got <- line
			}
			if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
				t.Errorf("after the lines: %q, %v; want the end", rest, err)
			}
		})
	}
}

// TestExpectContinue: an origin that refuses a body at once gets its answer to the
// client at once, with no body bytes sent after it; one that says 100 Continue gets
// the body.
func TestExpectContinue(t *testing.T) {
	var mu sync.Mutex
	var bodies []string
	origin := startRawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		r, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if r.URL.Path == "/refuse" {
			io.WriteString(c, "HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big\n")
			c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			rest, _ := io.ReadAll(br)
			mu.Lock()
			bodies = append(bodies, string(rest))
			mu.Unlock()
			return
		}
		io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, string(b))
		mu.Unlock()
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	_, addr := serveProxy(t, Options{}, origin.addr())

	t.Run("refused", func(t *testing.T) {
		start := time.Now()
		c, br := rawRequest(t, addr, "PUT http://"+origin.addr()+"/refuse HTTP/1.1\r\nHost: "+origin.addr()+
			"\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); resp.StatusCode != 413 || took > time.Second {
			t.Fatalf("got %d after %v; want 413 at once", resp.StatusCode, took)
		}
		io.WriteString(c, "0123456789") // a client that sends the body anyway
		time.Sleep(700 * time.Millisecond)
		mu.Lock()
		defer mu.Unlock()
		if len(bodies) != 1 || bodies[0] != "" {
			t.Errorf("origin received %q after its 413; want nothing", bodies)
		}
	})
	t.Run("continue", func(t *testing.T) {
		c, br := rawRequest(t, addr, "PUT http://"+origin.addr()+"/ok HTTP/1.1\r\nHost: "+origin.addr()+
			"\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusContinue {
			t.Fatalf("first answer %v, %v; want 100 Continue", resp, err)
		}
		io.WriteString(c, "0123456789")
		resp, err = http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("final answer %v, %v; want 200", resp, err)
		}
		mu.Lock()
		defer mu.Unlock()
		if bodies[len(bodies)-1] != "0123456789" {
			t.Errorf("origin received %q; want the body", bodies[len(bodies)-1])
		}
	})
}

// TestUpstreamAnswersBounded: answer headers past the limit are a 502, an origin
// that never answers a 504 after the header timeout, and more than five interim
// answers a 502; each names the target.
func TestUpstreamAnswersBounded(t *testing.T) {
	big := "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", 64<<10) + "\r\nContent-Length: 0\r\n\r\n"
	interim := func(n int) string {
		return strings.Repeat("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n", n) + okAnswer("ok")
	}
	tests := []struct {
		name       string
		answer     string // "" never answers
		wantStatus int
		wantBody   string
		wantPhrase string
	}{
		{"header too large", big, 502, "egressd: answer headers too large from %s (more than 16384 bytes)\n", "Bad Gateway: egressd: answer headers from %s too large"},
		{"no answer", "", 504, "egressd: %s did not answer within 200ms\n", "Gateway Timeout: egressd: no answer from %s in time"},
		{"six interim answers", interim(6), 502, "egressd: no valid answer from %s: more than 5 interim (1xx) answers\n", "Bad Gateway: egressd: no valid answer from %s"},
		{"five interim answers", interim(5), 200, "ok", "OK"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			origin := startRawOrigin(t, func(c net.Conn, br *bufio.Reader) {
				r, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				io.Copy(io.Discard, r.Body)
				if tt.answer == "" {
					io.Copy(io.Discard, br) // until the proxy gives up
					return
				}
				io.WriteString(c, tt.answer)
			})
			_, addr := serveProxy(t, Options{MaxResponseHeaderBytes: 16 << 10, ResponseHeaderTimeout: 200 * time.Millisecond}, origin.addr())
			for _, method := range []string{"GET", "POST"} {
				_, br := rawRequest(t, addr, method+" http://"+origin.addr()+"/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				wantBody, wantPhrase := tt.wantBody, tt.wantPhrase
				if strings.Contains(wantBody, "%s") {
					wantBody = fmt.Sprintf(wantBody, origin.addr())
				}
				if strings.Contains(wantPhrase, "%s") {
					wantPhrase = fmt.Sprintf(wantPhrase, origin.addr())
				}
				gotPhrase := strings.TrimPrefix(resp.Status, fmt.Sprint(resp.StatusCode)+" ")
				if resp.StatusCode != tt.wantStatus || string(body) != wantBody || gotPhrase != wantPhrase {
					t.Errorf("%s: got %q %q; want %d %q with %q", method, resp.Status, body, tt.wantStatus, wantPhrase, wantBody)
				}
			}
		})
	}
}

// TestReasonPhrases: clients that show only the status line see why egressd refused.
func TestReasonPhrases(t *testing.T) {
	deadAddr := closedPort(t)
	_, client, _ := testProxy(t, deadAddr)

	resp, err := client.Get("http://denied.invalid/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Status != "403 Forbidden by egressd: not on the allowlist" || resp.Header.Get(headerDenied) != "not on the allowlist" {
		t.Errorf("plain HTTP denial: %q %v; want the reason in the status line", resp.Status, resp.Header)
	}
	resp, err = client.Get("http://" + deadAddr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if want := "502 Bad Gateway: egressd: connection to " + deadAddr + " refused"; resp.Status != want {
		t.Errorf("plain HTTP failure: %q; want %q", resp.Status, want)
	}

	// Go's client reports only the status text of a refused CONNECT.
	tr := client.Transport.(*http.Transport).Clone()
	tc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	defer tr.CloseIdleConnections()
	_, err = tc.Get("https://denied.invalid/")
	if err == nil || !strings.Contains(err.Error(), "Forbidden by egressd: not on the allowlist") {
		t.Errorf("CONNECT denial through Go's client: %v; want the reason", err)
	}
	_, err = tc.Get("https://" + deadAddr + "/")
	if err == nil || !strings.Contains(err.Error(), "Bad Gateway: egressd: connection to "+deadAddr+" refused") {
		t.Errorf("CONNECT failure through Go's client: %v; want the cause", err)
	}
}

// TestFailedUpgradeCloses: a 502 on an Upgrade request ends the client connection.
func TestFailedUpgradeCloses(t *testing.T) {
	origin := startRawOrigin(t, func(c net.Conn, br *bufio.Reader) { http.ReadRequest(br) })
	_, addr := serveProxy(t, Options{}, origin.addr())
	_, br := rawRequest(t, addr, "GET http://"+origin.addr()+"/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	if resp.StatusCode != 502 || !resp.Close {
		t.Errorf("got %d, close %v; want 502 with Connection: close", resp.StatusCode, resp.Close)
	}
}

// TestWebsocketUpgrade: a websocket upgrade goes through the one upstream client,
// both ways, and its exchange is finished (one access log line) when it ends.
func TestWebsocketUpgrade(t *testing.T) {
	origin := startRawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		line, _ := br.ReadString('\n')
		io.WriteString(c, "echo "+line)
	})
	p, addr, log := func() (*Proxy, string, *syncBuffer) {
		log := &syncBuffer{}
		p, addr := serveProxy(t, Options{Logger: slog.New(slog.NewJSONHandler(log, nil))}, origin.addr())
		return p, addr, log
	}()
	c, br := rawRequest(t, addr, "GET http://"+origin.addr()+"/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("got %v, %v; want 101", resp, err)
	}
	io.WriteString(c, "hello\n")
	if got, err := br.ReadString('\n'); got != "echo hello\n" {
		t.Fatalf("through the upgrade: %q, %v", got, err)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("client connection still open after the origin ended")
	}
	if !waitFor(func() bool { return strings.Count(log.String(), `"msg":"request"`) == 1 && p.conns.Load() == 0 }) {
		t.Errorf("after the upgrade: %d access log lines, %d connections counted; want 1 and 0:\n%s",
			strings.Count(log.String(), `"msg":"request"`), p.conns.Load(), log.String())
	}
}

// namesResolver answers every name with one loopback address and records the names.
type namesResolver struct {
	mu    sync.Mutex
	addr  netip.Addr
	asked []string
}

func (r *namesResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.asked = append(r.asked, host)
	return []netip.Addr{r.addr}, nil
}

// TestDialsTheDecidedName: every path resolves the normalized host the policy
// decided, never the spelling the client used, and sends that host upstream.
func TestDialsTheDecidedName(t *testing.T) {
	var hosts sync.Map
	origin := startRawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		for {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, r.Body)
			hosts.Store(r.Host, true)
			io.WriteString(c, okAnswer("ok"))
		}
	})
	_, port, _ := net.SplitHostPort(origin.addr())
	res := &namesResolver{addr: netip.MustParseAddr("127.0.0.1")}
	d := dialer.New(dialer.Options{Resolver: res, Exempt: exemptAll{}})
	_, addr := serveProxy(t, Options{Dialer: d}, "*.wild.test:"+port)
	for _, msg := range []string{
		"GET http://ok\uff0ewild.test:" + port + "/ HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST http://OK.Wild.Test.:" + port + "/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
		"CONNECT ok\uff0ewild.test:" + port + " HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		_, br := rawRequest(t, addr, msg)
		resp, err := http.ReadResponse(br, &http.Request{Method: strings.Fields(msg)[0]})
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%q: %v, %v; want 200", strings.Fields(msg)[:2], resp, err)
		}
	}
	res.mu.Lock()
	defer res.mu.Unlock()
	for _, name := range res.asked {
		if name != "ok.wild.test" {
			t.Errorf("resolver asked for %q; want only ok.wild.test", name)
		}
	}
	if len(res.asked) == 0 {
		t.Error("resolver never asked")
	}
	hosts.Range(func(k, _ any) bool {
		if k != "ok.wild.test:"+port {
			t.Errorf("origin got Host %q; want ok.wild.test:%s", k, port)
		}
		return true
	})
}

type exemptAll struct{}

func (exemptAll) Exempt(netip.Addr) bool { return true }

// TestConnectDurationOnEveryOutcome: a CONNECT whose dial fails is observed too.
func TestConnectDurationOnEveryOutcome(t *testing.T) {
	deadAddr := closedPort(t)
	p, addr := serveProxy(t, Options{}, deadAddr)
	for _, target := range []string{deadAddr, "denied.invalid:443"} {
		_, br := rawRequest(t, addr, "CONNECT "+target+" HTTP/1.1\r\nHost: x\r\n\r\n")
		if _, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"}); err != nil {
			t.Fatal(err)
		}
	}
	if !waitFor(func() bool { return histogramCount(t, p, kindConnect) == 2 }) {
		t.Errorf("CONNECT duration observed %d times; want 2 (a dial failure and a denial)", histogramCount(t, p, kindConnect))
	}
}

func histogramCount(t *testing.T, p *Proxy, kind string) uint64 {
	t.Helper()
	h, ok := p.metrics.durationBy[kind].(prometheus.Metric)
	if !ok {
		t.Fatal("duration observer is not a metric")
	}
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}

// TestHTTPSInAbsoluteForm: "GET https://..." sent to the proxy is fetched over TLS,
// verified against the configured roots, with the one upstream client.
func TestHTTPSInAbsoluteForm(t *testing.T) {
	origin := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "secure "+r.Host)
	}))
	t.Cleanup(origin.Close)
	roots := x509.NewCertPool()
	roots.AddCert(origin.Certificate())
	host := origin.Listener.Addr().String()
	for _, tt := range []struct {
		name string
		tls  *tls.Config
		want int
	}{
		{"trusted", &tls.Config{RootCAs: roots}, 200},
		{"untrusted", nil, 502},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, addr := serveProxy(t, Options{UpstreamTLS: tt.tls}, host)
			_, br := rawRequest(t, addr, "GET https://"+host+"/ HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.want || tt.want == 200 && string(body) != "secure "+host {
				t.Errorf("got %d %q; want %d", resp.StatusCode, body, tt.want)
			}
		})
	}
}

// TestAnswerHeaderLineBounded: one header line past 64 KiB is too large even within
// the total bound; many shorter lines adding up to more are fine.
func TestAnswerHeaderLineBounded(t *testing.T) {
	many := ""
	for i := range 4 {
		many += fmt.Sprintf("X-H%d: %s\r\n", i, strings.Repeat("a", 60<<10))
	}
	for _, tt := range []struct {
		name, headers string
		want          int
	}{
		{"one long line", "X-Big: " + strings.Repeat("a", 65<<10) + "\r\n", 502},
		{"many lines", many, 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			origin := startRawOrigin(t, serveN(1, func(*http.Request, int) string {
				return "HTTP/1.1 200 OK\r\n" + tt.headers + "Content-Length: 0\r\n\r\n"
			}))
			_, addr := serveProxy(t, Options{}, origin.addr())
			_, br := rawRequest(t, addr, "GET http://"+origin.addr()+"/ HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != tt.want {
				t.Errorf("got %v; want %d", err, tt.want)
				if resp != nil {
					t.Errorf("got status %d; want %d", resp.StatusCode, tt.want)
				}
			}
		})
	}
}
