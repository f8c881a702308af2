package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
)

// refuseConnect turns an answer of egressd's own into goproxy's rejection of a
// CONNECT, which it writes (status line as given) on the hijacked connection before
// closing it. The exchange ends here: nothing more happens on it.
func (ex *exchange) refuseConnect(r *http.Request, resp *http.Response) *http.Response {
	a := resp.Body.(*answer)
	resp.Body = io.NopCloser(strings.NewReader(a.text))
	resp.Header.Set("Connection", "close")
	if a.phrase != "" {
		resp.Status = fmt.Sprintf("%d %s", resp.StatusCode, a.phrase)
	}
	ex.finish()
	return resp
}

// startTunnel dials the decided target and answers 200, in the HTTP handler's
// goroutine, then hands the bytes to two fresh copier goroutines and returns. An
// idle tunnel so keeps only two shallow stacks alive, not the handler's deep one
// (grown by parsing and dialling), the request, or net/http's buffers. The tunnel
// owns ex from then on and finishes it when it ends.
func (p *Proxy) startTunnel(ex *exchange, client net.Conn) {
	ex.slot = p.acquireSlot()
	upstream, err := p.dialer.Dial(context.Background(), ex.host, ex.port)
	if err != nil {
		ex.refuseTunnel(client, err)
		client.Close()
		ex.finish()
		return
	}
	if _, err := io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		upstream.Close()
		client.Close()
		ex.status, ex.reason = 499, "client gone"
		ex.finish()
		return
	}
	ex.status = http.StatusOK
	ex.answered()
	p.relay(ex, client, upstream)
}

// relay hands client and upstream to a tunnel: the bytes the client sent early (an
// earlyConn) go upstream first, then two copiers move the rest. The tunnel owns ex
// from then on and finishes it when it ends.
func (p *Proxy) relay(ex *exchange, client net.Conn, upstream *net.TCPConn) {
	if ec, ok := client.(*earlyConn); ok {
		client = ec.Conn
		n, err := upstream.Write(ec.early)
		ex.up.Add(int64(n))
		if err != nil {
			upstream.Close()
			client.Close()
			ex.finish()
			return
		}
	}
	t := &tunnel{client: client, upstream: upstream, host: ex.host, port: ex.port, ex: ex, end: p.endTunnel, halfClose: p.opts.HalfCloseTimeout}
	p.tunnels.add(t)
	p.tunnelsLive.Add(1)
	p.metrics.tunnelsActive.Inc()
	t.start()
}

// endTunnel runs once, when both directions of t have ended.
func (p *Proxy) endTunnel(t *tunnel) {
	p.tunnels.remove(t)
	p.metrics.tunnelsActive.Dec()
	ex := t.ex
	ex.up.Add(t.up)
	ex.down.Store(t.down)
	p.metrics.bytesUp.Add(float64(t.up))
	p.metrics.bytesDown.Add(float64(t.down))
	ex.closedBy = t.closeReason()
	p.metrics.tunnelsClosed.WithLabelValues(ex.closedBy).Inc()
	ex.finish()
	p.tunnelsLive.Add(-1)
}

// refuseTunnel answers a CONNECT whose upstream could not, or may not, be reached,
// with the same status, reason phrase and body as a plain-HTTP request gets.
func (ex *exchange) refuseTunnel(client net.Conn, err error) {
	resp := ex.failure(&http.Request{Method: http.MethodConnect}, err)
	a := resp.Body.(*answer)
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", resp.StatusCode, a.phrase)
	resp.Header.Set("Connection", "close")
	resp.Header.Set("Content-Length", fmt.Sprint(len(a.text)))
	resp.Header.Write(&b)
	b.WriteString("\r\n")
	b.WriteString(a.text)
	io.WriteString(client, b.String())
}
