package proxy

// This file is egressd's one contact with github.com/elazarl/goproxy: the
// construction, the handlers, and the entry point that hands requests to it. No
// other file imports goproxy.
//
// What egressd relies on goproxy for, each pinned by a test in goproxy_test.go:
//   - A request in origin form ("GET /path") goes to NonproxyHandler, untouched.
//   - Plain HTTP: the OnRequest handler runs first, with a fresh ProxyCtx whose
//     UserData is ours to set; a response it returns is written instead of sending
//     the request. Otherwise goproxy sends the request with ctx.RoundTripper (never
//     with Tr, which here can dial nothing) and writes the answer: the status and
//     headers as they are, then the body by io.Copy to the ResponseWriter it was
//     given (so through the body's WriteTo), then Close on the body. A body whose
//     reader is the one the RoundTripper returned keeps its Content-Length header.
//   - A 101 answer with "Upgrade: websocket" is relayed both ways over the hijacked
//     client connection, with the body as the upstream end; goproxy then returns
//     without closing the client connection, and closes the body.
//   - CONNECT: the HandleConnect handler runs first with a fresh ProxyCtx. RejectConnect
//     with ctx.Resp writes ctx.Resp (its Status line as given) on the hijacked
//     connection and closes it; ConnectHijack hijacks the connection through our
//     ResponseWriter's Hijack and calls the Hijack function with that connection
//     and the same ProxyCtx, then returns.
//   - goproxy deletes Proxy-Connection, Proxy-Authorization and Proxy-Authenticate,
//     and Connection except on a websocket upgrade, before sending a request.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"github.com/elazarl/goproxy"

	"github.com/egressd/egressd/originate"
	"github.com/egressd/egressd/policy"
)

// newGoproxy configures goproxy: our handlers decide, our client sends, and nothing
// is taken from the environment (goproxy reads HTTP_PROXY by default, which in a pod
// points at egressd itself).
func (p *Proxy) newGoproxy() http.Handler {
	gp := goproxy.NewProxyHttpServer()
	gp.Logger = goproxyLogger{p.log}
	gp.Verbose = false
	gp.KeepAcceptEncoding = true
	// onRequest takes the hop-by-hop headers off every request it lets through
	// (removeHopByHop: goproxy's RemoveProxyHeaders' list and more), so goproxy's
	// own pass, which also formats the URL for a debug line per request, is skipped.
	gp.KeepHeader = true
	gp.ConnectDial = nil
	// Every request goes through ctx.RoundTripper; a Transport that cannot dial
	// makes any other path fail loudly instead of reaching the network unchecked.
	gp.Tr = &http.Transport{Proxy: nil, DialContext: refuseDial}
	gp.NonproxyHandler = p.opts.LocalHandler
	rt := goproxy.RoundTripperFunc(p.roundTrip)
	gp.OnRequest().DoFunc(func(r *http.Request, ctx *goproxy.ProxyCtx) (*http.Request, *http.Response) {
		ctx.RoundTripper = rt
		return p.onRequest(r, ctx)
	})
	gp.OnRequest().HandleConnectFunc(p.onConnect)
	return gp
}

var errNoDirectDial = errors.New("proxy: goproxy's own transport is never used")

func refuseDial(context.Context, string, string) (net.Conn, error) {
	return nil, errNoDirectDial
}

// ServeHTTP is the proxy's entry point for every request on its listener: egressd's
// own endpoints are answered here, the rest goes to goproxy.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect && !r.URL.IsAbs() {
		p.opts.LocalHandler.ServeHTTP(w, r)
		return
	}
	if isLocalHost(r.URL.Hostname()) {
		p.serveLocal(w, r)
		return
	}
	if p.conns.Load() > int64(p.opts.MaxConnections) {
		ex := p.newExchange("", r)
		w.Header().Set("Connection", "close")
		http.Error(w, "egressd: too many connections; try again later", http.StatusServiceUnavailable)
		ex.status, ex.reason = http.StatusServiceUnavailable, "too many connections"
		ex.finish()
		return
	}
	cw := &clientWriter{ResponseWriter: w}
	p.gp.ServeHTTP(cw, r)
	if cw.hijacked != nil {
		if r.Method != http.MethodConnect {
			// An upgrade that goproxy relayed: goproxy leaves the client's end open.
			cw.hijacked.Close()
		}
		return
	}
	cw.commit()
}

// exchangeOf returns the exchange that onRequest or onConnect put in ctx.
func exchangeOf(ctx *goproxy.ProxyCtx) (*exchange, error) {
	if ex, ok := ctx.UserData.(*exchange); ok {
		return ex, nil
	}
	return nil, errors.New("proxy: the request's exchange is missing from goproxy's context")
}

// onRequest decides a plain HTTP request in absolute form. The target is the request
// URI's host and port; the client's Host header is never consulted. What is sent
// upstream names the decided, normalized host, in the URL (which the client dials)
// and in the Host header (RFC 9112 section 3.2.2).
func (p *Proxy) onRequest(r *http.Request, ctx *goproxy.ProxyCtx) (*http.Request, *http.Response) {
	ex := p.newExchange(kindHTTP, r)
	ctx.UserData = ex
	host, port, err := policy.URLTarget(r.URL)
	if err != nil {
		ex.target = r.URL.Host
		return r, ex.badRequest(r, err)
	}
	d, ok := ex.decide(host, port)
	e := p.origins.Load().Lookup(d.Host)
	if e != nil && p.opts.Originator != nil && d.Port != e.Port {
		// egressd connects to the entry's port, whatever port the URL names: that
		// is the target the policy decides.
		d, ok = ex.decide(host, e.Port)
	}
	if !ok {
		return r, ex.deny(r, d)
	}
	if !d.Allow && (d.Reason == policy.ReasonInvalidHost || d.Reason == policy.ReasonNonCanonicalIP) {
		ex.decision = decisionDeny // report mode lets denials through, but no target of this kind
		return r, ex.deny(r, d)
	}
	ex.upgrade = isWebsocket(r.Header)
	removeHopByHop(r.Header)
	r.RequestURI = "" // a client request, as goproxy's RemoveProxyHeaders leaves it
	if e != nil && p.opts.Originator != nil {
		return p.originate(r, ex, e, d)
	}
	r.Host = hostHeader(d, r.URL.Port() != "")
	r.URL.Host = d.Target()
	// Go's server has already dropped a Content-Length sent beside a Transfer-Encoding,
	// so the two cannot be told apart here: after any request with a Transfer-Encoding
	// the client connection is closed, as RFC 9112 section 6.3 asks of the ambiguous case.
	ex.closeAfter = len(r.TransferEncoding) > 0
	return r, nil
}

// originate sends a request for a host with an upstreams entry over TLS that egressd
// makes itself, to the entry's port (which onRequest has decided), with the entry's
// headers set, replacing what the function sent.
func (p *Proxy) originate(r *http.Request, ex *exchange, e *originate.Entry, d policy.Decision) (*http.Request, *http.Response) {
	ex.origin = e
	r.URL.Scheme = "https"
	r.URL.Host = d.Target()
	r.Host = hostHeader(d, e.Port != 443)
	h, err := p.opts.Originator.Headers(e)
	if err != nil {
		return r, ex.failure(r, err)
	}
	for name, v := range h {
		r.Header[name] = v
	}
	ex.injected = e.HeaderNames()
	return r, nil
}

// hostHeader is the Host header for the decided target: its normalized host, with
// the port if the request named one.
func hostHeader(d policy.Decision, withPort bool) string {
	if withPort {
		return d.Target()
	}
	if d.Addr.Is6() {
		return "[" + d.Host + "]"
	}
	return d.Host
}

// roundTrip sends every allowed plain-HTTP request. It never returns an error:
// a failure becomes egressd's own answer, so that every answer goproxy writes is
// bound to its exchange.
func (p *Proxy) roundTrip(r *http.Request, ctx *goproxy.ProxyCtx) (*http.Response, error) {
	ex, err := exchangeOf(ctx)
	if err != nil {
		p.log.Error("proxy: request without an exchange", "error", err)
		return textResponse(r, http.StatusInternalServerError, "egressd: internal error\n"), nil
	}
	var (
		cfg *tls.Config // nil: the default for the scheme
		id  string
	)
	if ex.origin != nil {
		if cfg, id, err = p.opts.Originator.ClientTLS(ex.origin, ex.host); err != nil {
			return ex.failure(r, err), nil
		}
		id = "origin:" + ex.origin.Name() + ":" + id // never shared with another entry's or a plain https request's
	}
	resp, err := p.upstreams.send(ex.upstreamRequest(r), cfg, id)
	if err != nil {
		return ex.failure(r, err), nil
	}
	return ex.answer(resp), nil
}

// onConnect decides a CONNECT request that net/http read (one that came after
// another request on its connection, or that the first-request reader in connect.go
// left to net/http). A denial is a 403 written before any tunnel, after which goproxy
// closes the client connection; an allowed target is served by startTunnel on the
// hijacked connection.
func (p *Proxy) onConnect(hostport string, ctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
	ex, refusal := p.decideConnect(ctx.Req, hostport, nil)
	ctx.UserData = ex
	if refusal != nil {
		ctx.Resp = refusal
		return goproxy.RejectConnect, hostport
	}
	return connectHijack, hostport
}

// connectHijack hands an allowed CONNECT's client connection to startTunnel.
var connectHijack = &goproxy.ConnectAction{
	Action: goproxy.ConnectHijack,
	Hijack: func(_ *http.Request, client net.Conn, ctx *goproxy.ProxyCtx) {
		ex, err := exchangeOf(ctx)
		if err != nil {
			client.Close()
			panic(err) // unreachable: onConnect always sets it; net/http recovers and logs
		}
		ex.p.startTunnel(ex, client)
	},
}

// textResponse is an answer of egressd's own.
func textResponse(r *http.Request, status int, body string) *http.Response {
	return goproxy.NewResponse(r, "text/plain; charset=utf-8", status, body)
}

// goproxyLogger sends goproxy's own messages to the debug log.
type goproxyLogger struct{ log *slog.Logger }

func (l goproxyLogger) Printf(format string, v ...any) {
	l.log.Debug("goproxy", "msg", fmt.Sprintf(format, v...))
}
