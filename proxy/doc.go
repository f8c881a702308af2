// Package proxy is egressd's forward proxy: it takes HTTP requests in absolute form
// and CONNECT tunnels from function pods, asks the policy whether each target may be
// reached, and moves the bytes of those it allows.
//
// It is built on github.com/elazarl/goproxy. Plain HTTP goes through goproxy's
// request and response handlers to the origin, with a dialer that resolves once,
// checks every address and dials the one it checked: bodiless GET, HEAD and OPTIONS
// on the serving goroutine over kept connections (upstreams), everything else
// through an http.Transport. CONNECT is decided in a goproxy CONNECT handler and
// served by a tunnel of our own (ConnectHijack) that keeps both ends raw
// *net.TCPConn, relays small pieces with read and write and bulk transfers with
// Linux splice, and half-closes.
//
// The policy is held in an atomic.Pointer and swapped by SetPolicy; no lock is taken
// to decide a request. The package does not read files or watch them: the caller
// loads policies and hands them over.
package proxy
