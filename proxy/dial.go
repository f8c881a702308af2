package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/egressd/egressd/guard"
	"github.com/egressd/egressd/policy"
)

// Resolver looks up the addresses of a host name. *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// dialer resolves a target once, checks every address, and dials only addresses it
// checked, in order, falling back to the next one when a connection fails. It never
// lets the operating system resolve a name, so what is dialled is what was checked:
// a DNS answer that changes between check and connect (rebinding) cannot matter.
type dialer struct {
	resolver Resolver
	timeout  time.Duration
	guard    *guard.Guard
	exempt   guard.Exempter // the allowlist's IP and CIDR rules
	// connect opens a TCP connection to a checked address; nil means net.Dialer.
	// Tests replace it with a double that records addresses and connects nowhere.
	connect func(ctx context.Context, ap netip.AddrPort) (net.Conn, error)
	// own holds the addresses of egressd's own listeners; dialling one would be a loop.
	own atomic.Pointer[[]netip.AddrPort]
}

// GuardedDialer returns a dial function that does what the proxy does before it
// connects: resolve once, skip every address the guard refuses (unless ex exempts
// it), and dial only an address it checked. egressd trace fetches with it.
func GuardedDialer(r Resolver, g *guard.Guard, ex guard.Exempter, timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &dialer{resolver: r, guard: g, exempt: ex, timeout: timeout}
	return d.dialContext
}

// Refusal reports whether err is a refusal by the guard or the loop check, and if so
// its reason phrase, the address refused and the hint.
func Refusal(err error) (reason, addr, hint string, ok bool) {
	var de *dialError
	if !errors.As(err, &de) || !de.refused() {
		return "", "", "", false
	}
	a := ""
	if de.guarded.Denied {
		a = de.guarded.Addr.String()
	}
	return de.reason, a, de.hint(), true
}

// dialError is a failure to reach an upstream, or a refusal to, with the status the
// client gets.
type dialError struct {
	status int // 403 for a loop or a guarded address, 502 or 504 for upstream failures
	// reason is a fixed phrase: for a refusal the policy.Reason, for a failure the
	// metric word (dns, refused, timeout, other).
	reason  string
	target  string
	host    string
	err     error
	guarded guard.Verdict // for a private-address refusal: the first address refused
	// answer is set for a failure after the connection was made: the origin gave no
	// valid answer.
	answer bool
}

func (e *dialError) Error() string {
	switch e.reason {
	case string(policy.ReasonLoop):
		return fmt.Sprintf("%s is egressd's own listener; a request through the proxy to itself would loop", e.target)
	case string(policy.ReasonPrivateAddress):
		return fmt.Sprintf("%s resolves to %s, a %s address", e.host, e.guarded.Addr, e.guarded.Range.Kind)
	case "dns":
		return fmt.Sprintf("cannot resolve %s: %v", e.target, e.err)
	case "timeout":
		return fmt.Sprintf("timed out connecting to %s", e.target)
	case "refused":
		return fmt.Sprintf("connection to %s refused", e.target)
	}
	if e.answer {
		return fmt.Sprintf("no valid answer from %s: %v", e.target, e.err)
	}
	return fmt.Sprintf("cannot connect to %s: %v", e.target, e.err)
}

func (e *dialError) Unwrap() error { return e.err }

// refused reports whether egressd refused the target (403), as opposed to failing to reach it.
func (e *dialError) refused() bool { return e.status == http.StatusForbidden }

// hint says what an operator can do about a refusal.
func (e *dialError) hint() string {
	switch e.reason {
	case string(policy.ReasonPrivateAddress):
		a := e.guarded.Addr
		return fmt.Sprintf("%s resolves to %s, a %s address; add %s to the allowlist if that is intended",
			e.host, a, e.guarded.Range.Kind, netip.PrefixFrom(a, a.BitLen()))
	case string(policy.ReasonLoop):
		return "call egressd's own endpoints directly, not through the proxy"
	}
	return ""
}

// addOwn records a listener address of this process, so that no request is proxied
// to it. A listener on an unspecified address (0.0.0.0, ::) is reached through every
// local address, so each of those is recorded with its port.
func (d *dialer) addOwn(addr net.Addr) {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return
	}
	add := []netip.AddrPort{netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}
	if ap.Addr().IsUnspecified() {
		for _, a := range localAddrs() {
			add = append(add, netip.AddrPortFrom(a, ap.Port()))
		}
	}
	for {
		old := d.own.Load()
		var next []netip.AddrPort
		if old != nil {
			next = append(next, *old...)
		}
		next = append(next, add...)
		if d.own.CompareAndSwap(old, &next) {
			return
		}
	}
}

// localAddrs returns the addresses of this machine's interfaces.
func localAddrs() []netip.Addr {
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, ia := range ifaddrs {
		if p, err := netip.ParsePrefix(ia.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out
}

// isOwn reports whether dialling ap would reach one of egressd's own listeners. Any
// loopback or unspecified address reaches a listener on an unspecified address.
func (d *dialer) isOwn(ap netip.AddrPort) bool {
	own := d.own.Load()
	if own == nil {
		return false
	}
	for _, o := range *own {
		if o.Port() != ap.Port() {
			continue
		}
		if o.Addr() == ap.Addr() || o.Addr().IsUnspecified() && (ap.Addr().IsLoopback() || ap.Addr().IsUnspecified()) {
			return true
		}
	}
	return false
}

// resolve returns the addresses of host: the address itself for an IP literal.
func (d *dialer) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a.Unmap()}, nil
	}
	addrs, err := d.resolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, errors.New("no addresses")
	}
	for i, a := range addrs {
		addrs[i] = a.Unmap()
	}
	return addrs, nil
}

// dial connects to host:port. The returned connection is a *net.TCPConn.
func (d *dialer) dial(ctx context.Context, host string, port uint16) (*net.TCPConn, error) {
	target := net.JoinHostPort(host, strconv.Itoa(int(port)))
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	addrs, err := d.resolve(ctx, host)
	if err != nil {
		if ctx.Err() != nil {
			return nil, &dialError{status: http.StatusGatewayTimeout, reason: "timeout", target: target, err: err}
		}
		return nil, &dialError{status: http.StatusBadGateway, reason: "dns", target: target, err: err}
	}
	var (
		lastErr error
		guarded *dialError
	)
	connect := d.connect
	if connect == nil {
		connect = dialTCP
	}
	for _, a := range addrs {
		ap := netip.AddrPortFrom(a, port)
		if d.isOwn(ap) {
			lastErr = &dialError{status: http.StatusForbidden, reason: string(policy.ReasonLoop), target: target, host: host}
			continue
		}
		if v := d.guard.Check(a, d.exempt); v.Denied {
			if guarded == nil {
				guarded = &dialError{status: http.StatusForbidden, reason: string(policy.ReasonPrivateAddress), target: target, host: host, guarded: v}
			}
			continue
		}
		c, err := connect(ctx, ap)
		if err == nil {
			if tc, ok := c.(*net.TCPConn); ok {
				return tc, nil
			}
			c.Close()
			return nil, fmt.Errorf("dialling %s gave a %T, not a TCP connection", ap, c)
		}
		lastErr = classify(target, err)
		if ctx.Err() != nil {
			break
		}
	}
	if lastErr == nil && guarded != nil {
		return nil, guarded // every address was refused by the guard
	}
	return nil, lastErr
}

// dialTCP connects with no TCP keep-alive: Go's default costs four setsockopt calls
// per connection, and a connection that goes quiet is closed by IdleTimeout anyway.
func dialTCP(ctx context.Context, ap netip.AddrPort) (net.Conn, error) {
	nd := net.Dialer{KeepAlive: -1}
	return nd.DialContext(ctx, "tcp", ap.String())
}

func classify(target string, err error) *dialError {
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded):
		return &dialError{status: http.StatusGatewayTimeout, reason: "timeout", target: target, err: err}
	case errors.Is(err, syscall.ECONNREFUSED):
		return &dialError{status: http.StatusBadGateway, reason: "refused", target: target, err: err}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &dialError{status: http.StatusGatewayTimeout, reason: "timeout", target: target, err: err}
	}
	return &dialError{status: http.StatusBadGateway, reason: "other", target: target, err: err}
}

// dialContext is the http.Transport's dialer for plain HTTP: the same checks as a tunnel.
func (d *dialer) dialContext(ctx context.Context, _, addr string) (net.Conn, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("invalid port in %q", addr)
	}
	return d.dial(ctx, host, uint16(port))
}
