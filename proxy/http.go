package proxy

import (
	"errors"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"

	"github.com/elazarl/goproxy"

	"github.com/egressd/egressd/policy"
)

// onRequest decides a plain HTTP request in absolute form. The target is the request
// URI's host and port; the client's Host header is never consulted, and the Host sent
// upstream is the URI's (RFC 9112 section 3.2.2).
func (p *Proxy) onRequest(r *http.Request, ctx *goproxy.ProxyCtx) (*http.Request, *http.Response) {
	ex := exchangeOf(r)
	ex.kind, ex.target = kindHTTP, r.URL.Host
	host, port, err := URLTarget(r.URL)
	if err != nil {
		ex.decision, ex.reason = decisionDeny, "bad request"
		return r, textResponse(r, http.StatusBadRequest, "egressd: "+err.Error()+"\n")
	}
	d, ok := p.decide(ex, kindHTTP, host, port)
	if !ok {
		return r, denyResponse(r, d)
	}
	r.Host = r.URL.Host
	removeHopByHop(r.Header)
	// Go's server has already dropped a Content-Length sent beside a Transfer-Encoding,
	// so the two cannot be told apart here: after any request with a Transfer-Encoding
	// the client connection is closed, as RFC 9112 section 6.3 asks of the ambiguous case.
	if len(r.TransferEncoding) > 0 {
		ex.closeAfter = true
	}
	if simple(r) {
		ctx.RoundTripper = p.upstreamRT // otherwise goproxy uses gp.Tr
	}
	return r, nil
}

// onResponse turns upstream failures into 502 and 504 answers that name the target,
// and removes hop-by-hop headers from upstream responses.
func (p *Proxy) onResponse(resp *http.Response, ctx *goproxy.ProxyCtx) *http.Response {
	ex := exchangeOf(ctx.Req)
	if ex.decision == decisionDeny {
		return resp // our own 403 or 400
	}
	if resp == nil {
		return p.upstreamFailure(ex, ctx.Req, ctx.Error)
	}
	removeHopByHop(resp.Header)
	if ex.closeAfter {
		resp.Header.Set("Connection", "close")
	}
	return resp
}

func (p *Proxy) upstreamFailure(ex *exchange, r *http.Request, err error) *http.Response {
	if err == nil {
		err = errors.New("no response from upstream")
	}
	status, denied, body := p.failure(ex, err)
	resp := textResponse(r, status, body)
	if denied != "" {
		resp.Header.Set(headerDenied, denied)
	}
	return resp
}

func textResponse(r *http.Request, status int, body string) *http.Response {
	return goproxy.NewResponse(r, "text/plain; charset=utf-8", status, body)
}

func denyResponse(r *http.Request, d policy.Decision) *http.Response {
	resp := textResponse(r, http.StatusForbidden, denyText(d))
	resp.Header.Set(headerDenied, string(d.Reason))
	return resp
}

// URLTarget returns the host and port an absolute-form request for u is for: the
// URL's port, or 80 for http and 443 for https.
func URLTarget(u *url.URL) (string, uint16, error) {
	var def uint16
	switch u.Scheme {
	case "http":
		def = 80
	case "https":
		def = 443
	default:
		return "", 0, errors.New("unsupported scheme " + strconv.Quote(u.Scheme) + "; egressd proxies http:// URLs and CONNECT tunnels")
	}
	return SplitTarget(u.Host, def)
}

// SplitTarget splits "host:port" (IPv6 in brackets); def is the port when there is none,
// and zero means a port is required.
func SplitTarget(hostport string, def uint16) (string, uint16, error) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		if def == 0 {
			return "", 0, errors.New("target " + strconv.Quote(hostport) + " has no port; write host:port")
		}
		host = strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]")
		return host, def, nil
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return "", 0, errors.New("invalid port " + strconv.Quote(portStr))
	}
	return host, uint16(port), nil
}

// hopByHop are the headers that describe one connection, not the message (RFC 9110
// section 7.6.1), and are never forwarded.
var hopByHop = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authorization",
	"Proxy-Authenticate", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// removeHopByHop deletes hop-by-hop headers and the headers that Connection names,
// except for a websocket upgrade, which goproxy carries through.
func removeHopByHop(h http.Header) {
	websocket := strings.EqualFold(h.Get("Upgrade"), "websocket")
	for _, v := range h["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			name = textproto.TrimString(name)
			if websocket && strings.EqualFold(name, "upgrade") {
				continue
			}
			h.Del(name)
		}
	}
	for _, name := range hopByHop {
		if websocket && (name == "Upgrade" || name == "Connection") {
			continue
		}
		h.Del(name)
	}
	if websocket {
		h.Set("Connection", "Upgrade")
	}
}
