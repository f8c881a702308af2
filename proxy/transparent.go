package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/egressd/egressd/dialer"
	"github.com/egressd/egressd/policy"
)

// The transparent listener takes the connections that egressd netns-setup's rules
// redirect from a function that ignores HTTP_PROXY. It learns where each was going
// (SO_ORIGINAL_DST), peeks at its first bytes for a name (TLS SNI, HTTP Host),
// decides (name, original port) with the same policy (without a name, only an IP or
// CIDR rule for the original address allows it), and then connects to what the name
// resolves to, never to the original address: an allowed SNI sent to another
// address reaches the allowed host or nothing. The peeked bytes are replayed and the
// connection relayed as a tunnel.

// peekMax bounds the bytes read to find a name; peekWait bounds the wait for them. A
// protocol where the server speaks first sends nothing and has no name.
const (
	peekMax  = 8 << 10
	peekWait = time.Second
)

// ServeTransparent accepts redirected connections on ln until it is closed (by
// Shutdown). It returns nil once closed.
func (p *Proxy) ServeTransparent(ln net.Listener) error {
	p.dialer.AddOwn(ln.Addr())
	p.mu.Lock()
	p.transparent = append(p.transparent, ln)
	p.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				p.metrics.acceptErrors.Inc()
				p.warnAccept("transparent listener cannot accept", "error", err.Error())
				time.Sleep(5 * time.Millisecond)
				continue
			}
			return err
		}
		tc, ok := c.(*net.TCPConn)
		if !ok {
			c.Close()
			continue
		}
		go p.serveIntercepted(tc)
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// serveIntercepted decides and relays one redirected connection.
func (p *Proxy) serveIntercepted(c *net.TCPConn) {
	ex := &exchange{p: p, start: p.opts.Now(), client: c.RemoteAddr().String(), method: "tcp", kind: kindTransparent}
	ex.slot = p.acquireSlot()
	if p.conns.Load() > int64(p.opts.MaxConnections) {
		c.Close()
		ex.status, ex.reason = http.StatusServiceUnavailable, "too many connections"
		ex.finish()
		return
	}
	dst, err := originalDst(c)
	if err != nil {
		p.log.Warn("intercepted connection without an original destination", "error", err)
		c.Close()
		ex.status, ex.reason = http.StatusBadRequest, "no original destination"
		ex.finish()
		return
	}
	c.SetReadDeadline(time.Now().Add(peekWait))
	seen, name, proto := peek(c)
	c.SetReadDeadline(time.Time{})
	ex.method = proto
	target := name
	if target == "" {
		target = dst.Addr().String()
	}
	d, ok := ex.decide(target, dst.Port())
	if !ok || (!d.Allow && (d.Reason == policy.ReasonInvalidHost || d.Reason == policy.ReasonNonCanonicalIP)) {
		ex.decision = decisionDeny
		ex.status = http.StatusForbidden
		ex.recordDenial() // before the client has its refusal
		refuseIntercepted(c, proto, d.Target(), string(d.Reason), d.Hint())
		ex.finish()
		return
	}
	ctx := context.Background()
	if name != "" && p.opts.TransparentVerifyDestination {
		addrs, err := p.dialer.Lookup(ctx, d.Host)
		if err == nil && !slices.Contains(addrs, dst.Addr().Unmap()) {
			reason := string(policy.ReasonDestinationMismatch)
			ex.decision, ex.reason, ex.status = decisionDeny, reason, http.StatusForbidden
			ex.hint = fmt.Sprintf("%s was sent to %s, which is not among its addresses %v", d.Host, dst.Addr(), addrs)
			ex.recordDenial()
			refuseIntercepted(c, proto, d.Target(), reason, ex.hint)
			ex.finish()
			return
		}
	}
	// The name's own addresses, never the original one: a spoofed SNI or Host reaches
	// the host it names. Without a name, the original address its IP rule allowed.
	upstream, err := p.dialer.Dial(ctx, d.Host, d.Port)
	if err != nil {
		resp := ex.failure(&http.Request{Method: "GET"}, err)
		a := resp.Body.(*answer)
		if de, ok := dialer.Refusal(err); ok {
			refuseIntercepted(c, proto, de.Target, de.Reason, de.Hint())
		} else if proto == "http" {
			writeRawAnswer(c, resp.StatusCode, a.phrase, resp.Header, a.text)
		} else if proto == "tls" {
			c.Write(tlsAlert)
		}
		c.Close()
		ex.finish()
		return
	}
	ex.status = http.StatusOK
	ex.answered()
	p.relay(ex, &earlyConn{Conn: c, early: seen}, upstream)
}

// tlsAlert is a fatal access_denied alert, the cheap refusal of a TLS client.
var tlsAlert = []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31}

// refuseIntercepted answers a denied connection as its protocol understands, then
// closes it: a TLS alert, or the proxy's own 403.
func refuseIntercepted(c net.Conn, proto, target, reason, hint string) {
	switch proto {
	case "tls":
		c.Write(tlsAlert)
	case "http":
		body := fmt.Sprintf("egressd: denied %s: %s; hint: %s\n", target, reason, hint)
		h := http.Header{"Content-Type": {"text/plain; charset=utf-8"}, headerDenied: {reason}}
		writeRawAnswer(c, http.StatusForbidden, reasonPhrase("Forbidden by egressd: "+reason), h, body)
	}
	c.Close()
}

// writeRawAnswer writes a whole HTTP/1.1 answer that closes the connection.
func writeRawAnswer(c net.Conn, status int, phrase string, h http.Header, body string) {
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", status, phrase)
	h = h.Clone()
	h.Set("Content-Length", fmt.Sprint(len(body)))
	h.Set("Connection", "close")
	h.Write(&b)
	b.WriteString("\r\n" + body)
	io.WriteString(c, b.String())
}

// peek reads the first bytes of c, up to peekMax or until the read deadline, and
// finds the name they carry: proto is "tls" with the SNI, "http" with the Host
// header's host, or "tcp" with none.
func peek(c net.Conn) (seen []byte, name, proto string) {
	buf := make([]byte, 0, 2048)
	tmp := make([]byte, 2048)
	for len(buf) < peekMax {
		n, err := c.Read(tmp[:min(len(tmp), peekMax-len(buf))])
		buf = append(buf, tmp[:n]...)
		switch kind := sniff(buf); kind {
		case "tls":
			if sni, done := sniOf(buf); done {
				return buf, sni, "tls"
			}
		case "http":
			if host, done := hostOf(buf); done {
				return buf, host, "http"
			}
		case "tcp":
			return buf, "", "tcp"
		}
		if err != nil {
			return buf, "", sniff(buf) // what it looked like, with no name
		}
	}
	return buf, "", sniff(buf)
}

// sniff says what the first bytes look like: "tls" (a handshake record), "http" (a
// request line's method), "tcp" (anything else), or "" (too few bytes to tell).
func sniff(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if b[0] == 0x16 {
		return "tls"
	}
	for i, c := range b {
		switch {
		case c == ' ' && i > 0:
			return "http"
		case c < 'A' || c > 'Z' || i > 16:
			return "tcp"
		}
	}
	return ""
}

// sniOf finds the SNI of a ClientHello with crypto/tls's own parser; done is false
// while the ClientHello is not complete.
func sniOf(b []byte) (sni string, done bool) {
	errStop := errors.New("stop")
	conn := &replayConn{r: bytes.NewReader(b)}
	err := tls.Server(conn, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		sni, done = h.ServerName, true
		return nil, errStop
	}}).Handshake()
	if done {
		return sni, true
	}
	// Short of bytes: try again with more. Anything else: not a ClientHello we read.
	return "", !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF)
}

// hostOf finds the host of an HTTP/1.x request's Host header once the header is
// complete.
func hostOf(b []byte) (host string, done bool) {
	if !bytes.Contains(b, []byte("\r\n\r\n")) {
		return "", false
	}
	r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b)))
	if err != nil {
		return "", true
	}
	h, _, err := net.SplitHostPort(r.Host)
	if err != nil {
		h = strings.TrimSuffix(strings.TrimPrefix(r.Host, "["), "]")
	}
	return h, true
}

// replayConn is a connection that reads given bytes and writes nowhere, for
// crypto/tls to parse a ClientHello from.
type replayConn struct {
	r *bytes.Reader
	net.Conn
}

func (c *replayConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *replayConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *replayConn) Close() error                     { return nil }
func (c *replayConn) SetDeadline(time.Time) error      { return nil }
func (c *replayConn) SetReadDeadline(time.Time) error  { return nil }
func (c *replayConn) SetWriteDeadline(time.Time) error { return nil }
func (c *replayConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *replayConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
