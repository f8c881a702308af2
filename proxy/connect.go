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
		p.metrics.duration.WithLabelValues(kindConnect).Observe(p.opts.Now().Sub(ex.start).Seconds())
		return goproxy.RejectConnect, hostport
	}
	return &goproxy.ConnectAction{
		Action: goproxy.ConnectHijack,
		Hijack: func(_ *http.Request, client net.Conn, _ *goproxy.ProxyCtx) { p.serveTunnel(ex, d, client) },
	}, hostport
}

// serveTunnel dials the decided target, answers 200, and moves bytes until both
// directions end. It runs in the client connection's goroutine and returns when the
// tunnel is closed, so the access log line is written once, with the byte counts.
func (p *Proxy) serveTunnel(ex *exchange, d policy.Decision, client net.Conn) {
	defer client.Close()
	upstream, err := p.dialer.dial(context.Background(), d.Host, d.Port)
	if err != nil {
		de := err.(*dialError)
		ex.status, ex.reason = de.status, de.reason
		body := "egressd: " + de.Error() + "\n"
		header := ""
		if de.reason == reasonLoop {
			ex.decision = decisionDeny
			body = "egressd: denied " + de.target + ": " + de.Error() + "\n"
			header = headerDenied + ": proxy loop\r\n"
		} else {
			p.metrics.upstreamErrors.WithLabelValues(de.reason).Inc()
		}
		fmt.Fprintf(client, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n%sConnection: close\r\n\r\n%s",
			de.status, http.StatusText(de.status), len(body), header, body)
		return
	}
	if _, err := io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		upstream.Close()
		ex.status, ex.reason = 499, "client gone"
		return
	}
	ex.status = http.StatusOK
	p.metrics.duration.WithLabelValues(kindConnect).Observe(p.opts.Now().Sub(ex.start).Seconds())

	var early []byte
	if ec, ok := client.(*earlyConn); ok {
		client, early = ec.Conn, ec.early
	}
	t := &tunnel{client: client, upstream: upstream, host: d.Host, port: d.Port}
	p.tunnels.add(t)
	p.metrics.tunnelsActive.Inc()
	ex.up, ex.down = t.run(early)
	p.tunnels.remove(t)
	p.metrics.tunnelsActive.Dec()
	p.metrics.tunnelBytes.WithLabelValues("upstream").Add(float64(ex.up))
	p.metrics.tunnelBytes.WithLabelValues("downstream").Add(float64(ex.down))
	ex.closedBy = t.closeReason()
	p.metrics.tunnelsClosed.WithLabelValues(ex.closedBy).Inc()
}
