// Package dialer connects egressd to the upstreams that the policy allowed, and only
// to them: it resolves a name once, asks the private-address guard about every
// address, refuses egressd's own listeners, and dials only an address it checked, in
// order, falling back to the next one when a connection fails. It never lets the
// operating system resolve a name, so what is dialled is what was checked: a DNS
// answer that changes between check and connect (rebinding) cannot matter.
//
// The proxy, egressd trace and the DNS listener use one Dialer, so the three agree
// on what is reachable. The package does not decide names against the allowlist:
// its caller does, and hands over the normalized name of the decision.
package dialer

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

	"github.com/egressd/egressd/internal/defaults"

	"github.com/egressd/egressd/guard"
	"github.com/egressd/egressd/policy"
)

// Resolver looks up the addresses of a host name. *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Options configure a Dialer. Zero values are documented per field.
type Options struct {
	// Resolver resolves names. If nil, net.DefaultResolver.
	Resolver Resolver
	// Guard refuses private and other non-public addresses. If nil, a Guard with no
	// further exemptions: the guard cannot be turned off.
	Guard *guard.Guard
	// Exempt lets through addresses that the guard would refuse: the allowlist's IP
	// and CIDR rules, as they are at each dial. If nil, nothing is exempt.
	Exempt guard.Exempter
	// Timeout bounds resolving and connecting. If zero, 10s.
	Timeout time.Duration
	// Connect opens a TCP connection to a checked address. If nil, a net.Dialer with
	// no TCP keep-alive. Tests replace it with a double that records addresses.
	Connect func(ctx context.Context, ap netip.AddrPort) (net.Conn, error)
}

// Dialer resolves, checks and dials. Create it with New; it is safe for concurrent use.
type Dialer struct {
	resolver Resolver
	guard    *guard.Guard
	exempt   guard.Exempter
	timeout  time.Duration
	connect  func(ctx context.Context, ap netip.AddrPort) (net.Conn, error)
	// own holds the addresses of egressd's own listeners; dialling one would be a loop.
	own atomic.Pointer[[]netip.AddrPort]
}

// New returns a Dialer.
func New(o Options) *Dialer {
	d := &Dialer{resolver: o.Resolver, guard: o.Guard, exempt: o.Exempt, timeout: o.Timeout, connect: o.Connect}
	if d.resolver == nil {
		d.resolver = net.DefaultResolver
	}
	if d.guard == nil {
		d.guard = guard.New(nil)
	}
	if d.exempt == nil {
		d.exempt = guard.ExemptFunc(func(netip.Addr) bool { return false })
	}
	if d.timeout == 0 {
		d.timeout = defaults.DialTimeout
	}
	if d.connect == nil {
		d.connect = dialTCP
	}
	return d
}

// Check is the guard's verdict on a, with the exemptions in force.
func (d *Dialer) Check(a netip.Addr) guard.Verdict { return d.guard.Check(a, d.exempt) }

// Error is a failure to reach an upstream, or a refusal to, with the HTTP status the
// client gets.
type Error struct {
	// Status is 403 for a loop or a guarded address, 502 or 504 for a failure.
	Status int
	// Reason is a fixed phrase: for a refusal the policy.Reason, for a failure the
	// metric word (dns, refused, timeout, other).
	Reason string
	// Target is the host:port asked for.
	Target string
	host   string
	err    error
	// guarded is the first address the guard refused.
	guarded guard.Verdict
}

func (e *Error) Error() string {
	switch e.Reason {
	case string(policy.ReasonLoop):
		return fmt.Sprintf("%s is egressd's own listener; a request through the proxy to itself would loop", e.Target)
	case string(policy.ReasonPrivateAddress):
		return fmt.Sprintf("%s resolves to %s, a %s address", e.host, e.guarded.Addr, e.guarded.Range.Kind)
	case "dns":
		return fmt.Sprintf("cannot resolve %s: %v", e.Target, e.err)
	case "timeout":
		return fmt.Sprintf("timed out connecting to %s", e.Target)
	case "refused":
		return fmt.Sprintf("connection to %s refused", e.Target)
	}
	return fmt.Sprintf("cannot connect to %s: %v", e.Target, e.err)
}

func (e *Error) Unwrap() error { return e.err }

// Refused reports whether egressd refused the target (403), as opposed to failing
// to reach it.
func (e *Error) Refused() bool { return e.Status == http.StatusForbidden }

// Hint says what an operator can do about a refusal; it is empty for a failure.
func (e *Error) Hint() string {
	switch e.Reason {
	case string(policy.ReasonPrivateAddress):
		a := e.guarded.Addr
		return fmt.Sprintf("%s resolves to %s, a %s address; add %s to the allowlist if that is intended",
			e.host, a, e.guarded.Range.Kind, netip.PrefixFrom(a, a.BitLen()))
	case string(policy.ReasonLoop):
		return "call egressd's own endpoints directly, not through the proxy"
	}
	return ""
}

// RefusedAddr is the address the guard refused, if that was the refusal.
func (e *Error) RefusedAddr() (netip.Addr, bool) {
	return e.guarded.Addr, e.guarded.Denied
}

// Refusal returns err as a refusal by the guard or the loop check, if it is one.
func Refusal(err error) (*Error, bool) {
	var de *Error
	if !errors.As(err, &de) || !de.Refused() {
		return nil, false
	}
	return de, true
}

// AddOwn records a listener address of this process, so that nothing is ever dialled
// to it. A listener on an unspecified address (0.0.0.0, ::) is reached through every
// local address, so each of those is recorded with its port.
func (d *Dialer) AddOwn(addr net.Addr) {
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

// IsOwn reports whether dialling ap would reach one of egressd's own listeners. Any
// loopback or unspecified address reaches a listener on an unspecified address.
func (d *Dialer) IsOwn(ap netip.AddrPort) bool {
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
func (d *Dialer) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
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

// Lookup returns the addresses host resolves to, for a check against them; it dials
// nothing. Every error is an *Error.
func (d *Dialer) Lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	addrs, err := d.resolve(ctx, host)
	if err != nil {
		return nil, &Error{Status: http.StatusBadGateway, Reason: "dns", Target: host, err: err}
	}
	return addrs, nil
}

// Dial connects to host:port, where host is the normalized name (or address) that
// the policy decided. Every error is an *Error.
func (d *Dialer) Dial(ctx context.Context, host string, port uint16) (*net.TCPConn, error) {
	return DialWith(ctx, d, host, port, d.connectTCP)
}

// DialWith is Dial with connect in place of the Dialer's own way of opening a
// connection to a checked address: the proxy's tunnels open theirs as bare
// sockets that never enter the Go runtime's poller. Resolving, the guard, the
// loop check, the timeout and the errors are Dial's.
func DialWith[C any](ctx context.Context, d *Dialer, host string, port uint16, connect func(context.Context, netip.AddrPort) (C, error)) (C, error) {
	var none C
	target := net.JoinHostPort(host, strconv.Itoa(int(port)))
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	addrs, err := d.resolve(ctx, host)
	if err != nil {
		if ctx.Err() != nil {
			return none, &Error{Status: http.StatusGatewayTimeout, Reason: "timeout", Target: target, err: err}
		}
		return none, &Error{Status: http.StatusBadGateway, Reason: "dns", Target: target, err: err}
	}
	var (
		lastErr error
		guarded *Error
	)
	for _, a := range addrs {
		ap := netip.AddrPortFrom(a, port)
		if d.IsOwn(ap) {
			lastErr = &Error{Status: http.StatusForbidden, Reason: string(policy.ReasonLoop), Target: target, host: host}
			continue
		}
		if v := d.Check(a); v.Denied {
			if guarded == nil {
				guarded = &Error{Status: http.StatusForbidden, Reason: string(policy.ReasonPrivateAddress), Target: target, host: host, guarded: v}
			}
			continue
		}
		c, err := connect(ctx, ap)
		if err == nil {
			return c, nil
		}
		lastErr = classify(target, err)
		if ctx.Err() != nil {
			break
		}
	}
	if lastErr == nil && guarded != nil {
		return none, guarded // every address was refused by the guard
	}
	return none, lastErr
}

// connectTCP opens a connection with the Dialer's connect, which must give a TCP
// connection.
func (d *Dialer) connectTCP(ctx context.Context, ap netip.AddrPort) (*net.TCPConn, error) {
	c, err := d.connect(ctx, ap)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		return tc, nil
	}
	c.Close()
	return nil, fmt.Errorf("dialling %s gave a %T, not a TCP connection", ap, c)
}

// dialTCP connects with no TCP keep-alive: Go's default costs four setsockopt calls
// per connection, and a connection that goes quiet is closed by an idle timeout anyway.
//
// Not net.Dialer.DialTCP: with no local address it binds to port 0 before
// connecting, and a port so bound must be free towards every destination, not just
// this one: under load the proxy runs out of ports ("bind: address already in use")
// while connect() alone would still find one.
func dialTCP(ctx context.Context, ap netip.AddrPort) (net.Conn, error) {
	nd := net.Dialer{KeepAlive: -1}
	return nd.DialContext(ctx, "tcp", ap.String())
}

func classify(target string, err error) *Error {
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded):
		return &Error{Status: http.StatusGatewayTimeout, Reason: "timeout", Target: target, err: err}
	case errors.Is(err, syscall.ECONNREFUSED):
		return &Error{Status: http.StatusBadGateway, Reason: "refused", Target: target, err: err}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &Error{Status: http.StatusGatewayTimeout, Reason: "timeout", Target: target, err: err}
	}
	return &Error{Status: http.StatusBadGateway, Reason: "other", Target: target, err: err}
}

// DialContext is Dial for an http.Transport or an http.Client: addr is host:port. A
// name is normalized as the policy normalizes it before it is resolved.
func (d *Dialer) DialContext(ctx context.Context, _, addr string) (net.Conn, error) {
	host, port, err := policy.SplitTarget(addr, 0)
	if err != nil {
		return nil, err
	}
	if _, err := netip.ParseAddr(host); err != nil {
		// The name as the policy compares it, never a spelling that only maps to it.
		if host, err = policy.NormalizeHost(host); err != nil {
			return nil, &Error{Status: http.StatusBadGateway, Reason: "dns", Target: addr, err: err}
		}
	}
	return d.Dial(ctx, host, port)
}
