// Package proxy is egressd's forward proxy: it takes HTTP requests in absolute form
// and CONNECT tunnels from function pods, asks the policy whether each target may be
// reached, and moves the bytes of those it allows.
//
// A request reads from the listener to the relay in these files:
//   - connect.go: the accept loop. A connection whose first request is a plain
//     CONNECT (what every HTTPS call of a function opens with) is decided and
//     tunnelled there, on a setup worker (workers.go: goroutines kept with their
//     grown stacks), its client and upstream bare sockets outside the Go runtime's
//     poller (socket_linux.go). A connection that starts with plain HTTP is served
//     by a loop of egressd's own (plain.go, its answers framed by net/http's rules
//     in plainwriter.go, common heads parsed in plainparse.go, each request's
//     context from requestctx.go) while its requests are the plain kind net/http
//     would pass on unchanged; any other connection, and any other request, goes
//     to net/http with the bytes read so far replayed.
//   - goproxy.go: the handler of both servers and egressd's one contact with goproxy. The
//     handlers decide each target against the policy and put the exchange (the
//     request's state, exchange.go) in goproxy's ProxyCtx.UserData.
//   - upstream.go: plain HTTP goes to its origin through one HTTP/1.1 client with
//     kept connections, dialled by the dialer package (resolve once, check every
//     address, dial only a checked one); answers are bounded and streamed.
//   - tunnel.go, after startTunnel (connect.go) has dialled: CONNECT tunnels relay raw
//     TCP and pass half-closes on. A poller (poller_linux.go: an epoll instance of
//     egressd's own, holding the tunnel's sockets out of the runtime's poller) moves
//     small pieces with a read and a write and holds no goroutine for an idle
//     tunnel; a bulk transfer, or a destination that cannot take a piece at once,
//     takes the tunnel to a copier goroutine per direction, which moves bulk with
//     Linux splice.
//
// Every answer goproxy writes to a plain-HTTP client has a body bound to its
// exchange: its WriteTo copies it (flushing each piece of an answer without a
// Content-Length), its Close finishes the exchange, once: the access log line, the
// metrics, the denial record and the connection slot.
//
// The policy is held in an atomic.Pointer and swapped by SetPolicy; no lock is taken
// to decide a request. The package does not read files or watch them: the caller
// loads policies and hands them over.
package proxy
