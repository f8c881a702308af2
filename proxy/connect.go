package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"

	"github.com/elazarl/goproxy"

	"github.com/egressd/egressd/policy"
)

// onConnect decides a CONNECT request. A denial is a 403 written before any tunnel,
// after which goproxy closes the client connection; an allowed target is served by
// serveTunnel on the hijacked connection.
func (p *Proxy) onConnect(hostport string, ctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
	r := ctx.Req
	ex := exchangeOf(r)
	ex.kind, ex.target = kindConnect, hostport
	host, port, err := SplitTarget(hostport, 0)
	if err != nil {
		ex.decision, ex.reason, ex.status = decisionDeny, "bad request", http.StatusBadRequest
		ctx.Resp = textResponse(r, http.StatusBadRequest, "egressd: "+err.Error()+"\n")
		return goproxy.RejectConnect, hostport
	}
	d, ok := p.decide(ex, kindConnect, host, port)
	if !ok {
		ex.status = http.StatusForbidden
		ctx.Resp = denyResponse(r, d)
		ctx.Resp.Header.Set("Connection", "close")
		p.metrics.durationBy[kindConnect].Observe(p.opts.Now().Sub(ex.start).Seconds())
		return goproxy.RejectConnect, hostport
	}
	return &goproxy.ConnectAction{
		Action: goproxy.ConnectHijack,
		Hijack: func(_ *http.Request, client net.Conn, _ *goproxy.ProxyCtx) { p.startTunnel(ex, d, client) },
	}, hostport
}

// startTunnel dials the decided target and answers 200, in the HTTP handler's
// goroutine, then hands the bytes to two fresh copier goroutines and returns. An
// idle tunnel so keeps only two shallow stacks alive, not the handler's deep one
// (grown by parsing and dialling), the request, or net/http's buffers. The tunnel
// owns ex from then on and writes the access log line when it ends.
func (p *Proxy) startTunnel(ex *exchange, d policy.Decision, client net.Conn) {
	upstream, err := p.dialer.dial(context.Background(), d.Host, d.Port)
	if err != nil {
		p.refuseTunnel(ex, client, err)
		client.Close()
		return
	}
	if _, err := io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		upstream.Close()
		client.Close()
		ex.status, ex.reason = 499, "client gone"
		return
	}
	ex.status = http.StatusOK
	p.count(ex)
	p.metrics.durationBy[kindConnect].Observe(p.opts.Now().Sub(ex.start).Seconds())

	if ec, ok := client.(*earlyConn); ok {
		client = ec.Conn
		n, err := upstream.Write(ec.early)
		ex.up += int64(n)
		if err != nil {
			upstream.Close()
			client.Close()
			return
		}
	}
	t := &tunnel{client: client, upstream: upstream, host: d.Host, port: d.Port, ex: ex, end: p.endTunnel}
	ex.detached = true
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
	ex.up += t.up
	ex.down = t.down
	p.metrics.bytesUp.Add(float64(ex.up))
	p.metrics.bytesDown.Add(float64(ex.down))
	ex.closedBy = t.closeReason()
	p.metrics.tunnelsClosed.WithLabelValues(ex.closedBy).Inc()
	p.finishDetached(ex)
	p.tunnelsLive.Add(-1)
}

// refuseTunnel answers a CONNECT whose upstream could not, or may not, be reached.
func (p *Proxy) refuseTunnel(ex *exchange, client net.Conn, err error) {
	status, denied, body := p.failure(ex, err)
	header := ""
	if denied != "" {
		header = headerDenied + ": " + denied + "\r\n"
	}
	fmt.Fprintf(client, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n%sConnection: close\r\n\r\n%s",
		status, http.StatusText(status), len(body), header, body)
}
