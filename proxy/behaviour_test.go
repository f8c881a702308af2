package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/egressd/egressd/dialer"
)

// countingResolver counts look-ups and answers none.
type countingResolver struct{ n atomic.Int64 }

func (r *countingResolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	r.n.Add(1)
	return nil, errors.New("no such host")
}

// TestLocalHostSpellings: every spelling of egressd.internal is egressd's own,
// answered by the local handler with nothing resolved, even with a rule for it.
func TestLocalHostSpellings(t *testing.T) {
	res := &countingResolver{}
	local := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "local "+r.URL.Path) })
	_, addr := serveProxy(t, Options{LocalHandler: local, Dialer: dialer.New(dialer.Options{Resolver: res})}, "egressd.internal")
	for _, host := range []string{"egressd.internal", "egressd.internal.", "EGRESSD.INTERNAL", "Egressd.Internal.", "egressd.internal:80"} {
		_, br := rawRequest(t, addr, "GET http://"+host+"/v1/secrets/k HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if string(body) != "local /v1/secrets/k" {
			t.Errorf("GET http://%s/...: %d %q; want the local handler", host, resp.StatusCode, body)
		}
	}
	if n := res.n.Load(); n != 0 {
		t.Errorf("%d look-ups for egressd.internal; want none", n)
	}
}

// TestRevokedTunnelClosed: a tunnel whose rule a new policy drops is closed.
func TestRevokedTunnelClosed(t *testing.T) {
	origin := startRawOrigin(t, func(c net.Conn, br *bufio.Reader) { io.Copy(c, br) })
	p, addr := serveProxy(t, Options{CloseRevokedTunnels: true}, origin.addr())
	c, br := rawRequest(t, addr, "CONNECT "+origin.addr()+" HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v, %v", resp, err)
	}
	io.WriteString(c, "ping\n")
	if line, _ := br.ReadString('\n'); line != "ping\n" {
		t.Fatalf("through the tunnel: %q", line)
	}
	p.SetPolicy(compileRules(t, "other.example.com"))
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("after the rule went: %v; want the tunnel closed", err)
	}
}

// TestHopByHopNotForwarded: connection headers go neither to the origin (see
// TestProxyHeadersNotForwarded) nor back to the client.
func TestHopByHopNotForwarded(t *testing.T) {
	origin := startRawOrigin(t, serveN(1, func(*http.Request, int) string {
		return "HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\nok"
	}))
	_, addr := serveProxy(t, Options{}, origin.addr())
	_, br := rawRequest(t, addr, "GET http://"+origin.addr()+"/ HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"X-Hop", "Keep-Alive"} {
		if v := resp.Header.Get(h); v != "" {
			t.Errorf("the client got %s: %q", h, v)
		}
	}
	if resp.Header.Get("X-Kept") != "1" {
		t.Errorf("the client lacks X-Kept: %v", resp.Header)
	}
}

// TestTransferEncodingClosesConnection: after a request whose framing could have
// been ambiguous, the client connection is closed.
func TestTransferEncodingClosesConnection(t *testing.T) {
	origin := startRawOrigin(t, serveN(1, func(*http.Request, int) string { return okAnswer("ok") }))
	_, addr := serveProxy(t, Options{}, origin.addr())
	_, br := rawRequest(t, addr, "POST http://"+origin.addr()+"/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	if !resp.Close {
		t.Error("the answer to a Transfer-Encoding request keeps the connection; want Connection: close")
	}
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("after the answer: %v; want the connection closed", err)
	}
}

// TestReportModeLabel: in report mode a denied target goes through, counted as
// report, not allow or deny.
func TestReportModeLabel(t *testing.T) {
	origin := startRawOrigin(t, serveN(1, func(*http.Request, int) string { return okAnswer("ok") }))
	d := dialer.New(dialer.Options{Exempt: exemptAll{}})                       // the guard is not what is tested
	p, addr := serveProxy(t, Options{Report: true, Dialer: d}, "127.0.0.1/32") // the address, not the port
	_, br := rawRequest(t, addr, "GET http://"+origin.addr()+"/ HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("report mode: %v, %v; want the request through", resp, err)
	}
	p.SetPolicy(compileRules(t)) // nothing allowed
	_, br = rawRequest(t, addr, "GET http://"+origin.addr()+"/ HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("report mode: %v, %v; want the request through", resp, err)
	}
	if !waitFor(func() bool { return testutil.ToFloat64(p.metrics.requestsBy[kindHTTP][decisionReport]) == 2 }) {
		t.Errorf("requests counted as report: %v; want 2", testutil.ToFloat64(p.metrics.requestsBy[kindHTTP][decisionReport]))
	}
	if n := testutil.ToFloat64(p.metrics.requestsBy[kindHTTP][decisionDeny]); n != 0 {
		t.Errorf("requests counted as deny in report mode: %v", n)
	}
}

// TestOwnListenerIsALoop: a request through the proxy to the proxy is refused.
func TestOwnListenerIsALoop(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	p, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	p.SetPolicy(compileRules(t, addr)) // the proxy's own address, allowed by a rule
	go p.Serve(ln)
	t.Cleanup(p.close)
	_, br := rawRequest(t, addr, "GET http://"+addr+"/ HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 403 || resp.Header.Get(headerDenied) != "proxy loop" {
		t.Errorf("a request to the proxy itself: %d %v; want 403 proxy loop", resp.StatusCode, resp.Header)
	}
	if !strings.Contains(resp.Status, "proxy loop") {
		t.Errorf("status line %q lacks the reason", resp.Status)
	}
}
