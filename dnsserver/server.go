// Package dnsserver answers DNS queries under the allowlist, for runtimes that ignore
// HTTP_PROXY and resolve names themselves.
//
// A name that some allowlist rule allows (on any port) is resolved through egressd's
// own resolver and cache, and every address the private-address guard would refuse is
// removed from the answer. Any other name is refused (REFUSED, or NXDOMAIN if so
// configured). The server resolves and filters; it opens no connection to the
// addresses it returns.
package dnsserver

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/egressd/egressd/internal/defaults"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/egressd/egressd/dialer"
	"github.com/egressd/egressd/guard"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/resolver"
)

// PolicySource returns the policy in force; the proxy is one.
type PolicySource interface {
	Policy() *policy.Matcher
}

// Resolver looks up addresses; *resolver.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// AddrChecker is the private-address guard with the exemptions in force;
// *dialer.Dialer is one, so that the listener answers with what the proxy dials.
type AddrChecker interface {
	Check(netip.Addr) guard.Verdict
}

// Options configure a Server.
type Options struct {
	Policy   PolicySource
	Resolver Resolver
	// Guard removes the addresses that egressd would refuse to dial from answers.
	// If nil, a dialer.Dialer with the guard, exempting the IP and CIDR rules of the
	// policy in force.
	Guard AddrChecker
	// NXDomain answers names the allowlist does not allow with NXDOMAIN instead of
	// REFUSED. glibc moves on to the next search domain after NXDOMAIN.
	NXDomain bool
	// TTL is the TTL of the answers given. If zero, 30s.
	TTL time.Duration
	// Timeout bounds resolving one query. If zero, 5s.
	Timeout    time.Duration
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Server is the DNS listener. Create it with New and run it with Serve.
type Server struct {
	opts    Options
	log     *slog.Logger
	queries *prometheus.CounterVec // result: allowed, refused, failed

	mu      sync.Mutex
	servers []*dns.Server
	closed  bool
}

// New returns a Server; it starts nothing.
func New(opts Options) (*Server, error) {
	if opts.TTL == 0 {
		opts.TTL = defaults.DNSListenTTL
	}
	if opts.Timeout == 0 {
		opts.Timeout = defaults.DNSListenWait
	}
	if opts.Guard == nil {
		policy := opts.Policy
		opts.Guard = dialer.New(dialer.Options{
			Exempt: guard.ExemptFunc(func(a netip.Addr) bool { return policy.Policy().Exempt(a) }),
		})
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	q := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "egressd_dns_listener_queries_total",
		Help: "Queries to egressd's DNS listener, by result (allowed, refused, failed).",
	}, []string{"result"})
	if err := opts.Registerer.Register(q); err != nil {
		return nil, err
	}
	for _, r := range []string{"allowed", "refused", "failed"} {
		q.WithLabelValues(r)
	}
	return &Server{opts: opts, log: opts.Logger, queries: q}, nil
}

// Listen opens UDP and TCP on one address. With port 0 the TCP side takes the port
// UDP got, and since that port may be taken for TCP, it tries again with a fresh
// port, a bounded number of times.
func Listen(addr string) (net.PacketConn, net.Listener, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, err
	}
	var lastErr error
	for attempt := 0; attempt < 20; attempt++ {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, err
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		lastErr = err
		if port != "0" {
			break
		}
	}
	return nil, nil, lastErr
}

// Serve answers on a UDP socket and a TCP listener (normally the same port) until
// Shutdown.
func (s *Server) Serve(pc net.PacketConn, ln net.Listener) error {
	udp := &dns.Server{PacketConn: pc, Handler: s}
	tcp := &dns.Server{Listener: ln, Handler: s}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		pc.Close()
		ln.Close()
		return nil
	}
	s.servers = []*dns.Server{udp, tcp}
	s.mu.Unlock()
	errc := make(chan error, 2)
	go func() { errc <- udp.ActivateAndServe() }()
	go func() { errc <- tcp.ActivateAndServe() }()
	err := <-errc
	if err2 := <-errc; err == nil {
		err = err2
	}
	return err
}

// Shutdown stops both listeners.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	var errs []error
	for _, srv := range s.servers {
		errs = append(errs, srv.ShutdownContext(ctx))
	}
	return errors.Join(errs...)
}

// ServeDNS answers one query.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.RecursionAvailable = true
	if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
		resp.Rcode = dns.RcodeFormatError
		w.WriteMsg(resp)
		return
	}
	q := req.Question[0]
	name := strings.TrimSuffix(strings.ToLower(q.Name), ".")
	m := s.opts.Policy.Policy()
	if m == nil || q.Qclass != dns.ClassINET || !m.AllowsName(name) {
		s.queries.WithLabelValues("refused").Inc()
		resp.Rcode = dns.RcodeRefused
		if s.opts.NXDomain {
			resp.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(resp)
		return
	}
	var network string
	switch q.Qtype {
	case dns.TypeA:
		network = "ip4"
	case dns.TypeAAAA:
		network = "ip6"
	default:
		// An allowed name, a type we do not serve: NODATA.
		s.queries.WithLabelValues("allowed").Inc()
		w.WriteMsg(resp)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.Timeout)
	defer cancel()
	addrs, err := s.opts.Resolver.LookupNetIP(ctx, network, name+".")
	var nf *resolver.NotFoundError
	switch {
	case errors.As(err, &nf):
		s.queries.WithLabelValues("allowed").Inc()
		resp.Rcode = dns.RcodeNameError
		w.WriteMsg(resp)
		return
	case err != nil:
		s.queries.WithLabelValues("failed").Inc()
		s.log.Warn("dns listener: resolving failed", "name", name, "error", err)
		resp.Rcode = dns.RcodeServerFailure
		w.WriteMsg(resp)
		return
	}
	s.queries.WithLabelValues("allowed").Inc()
	ttl := uint32(s.opts.TTL / time.Second)
	for _, a := range addrs {
		if s.opts.Guard.Check(a).Denied {
			continue
		}
		hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: ttl}
		if a.Is4() {
			resp.Answer = append(resp.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
		} else {
			resp.Answer = append(resp.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	w.WriteMsg(resp)
}
