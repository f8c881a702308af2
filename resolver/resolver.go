// Package resolver is egressd's own DNS stub resolver, on github.com/miekg/dns.
//
// egressd resolves every upstream name itself, so that the addresses it checks
// against the private-address guard are the addresses it dials: the operating
// system never gets a second look-up that could answer differently. The resolver
// reads /etc/hosts first (so "localhost" never leaves the machine), applies the
// search domains and ndots of resolv.conf as the system resolver does, queries the
// configured upstreams over UDP with TCP on truncation, caches answers within TTL
// caps (negative answers for the SOA minimum), and shares one query between
// concurrent look-ups of the same name.
//
// It decides nothing: the guard and the policy do.
package resolver

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/egressd/egressd/internal/defaults"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
)

// Options configure a Resolver. Zero values are documented per field.
type Options struct {
	// Upstreams are the DNS servers to ask, as host:port (a bare host gets port 53).
	// If empty, the nameservers of ResolvConf.
	Upstreams []string
	// ResolvConf is read for nameservers, search domains and ndots. If empty,
	// /etc/resolv.conf; a missing file means no search domains and ndots 1.
	ResolvConf string
	// HostsFile answers names before any query. If empty, /etc/hosts.
	HostsFile string
	// Timeout bounds one query to one upstream. If zero, 2s.
	Timeout time.Duration
	// Attempts is how many rounds over the upstreams a query gets. If zero, 2.
	Attempts int
	// MinTTL and MaxTTL clamp the TTL an answer is cached for. If MaxTTL is zero, 5m.
	// MinTTL zero caches an answer exactly as long as its TTL says.
	MinTTL, MaxTTL time.Duration
	// MaxEntries bounds the cache. If zero, 10000.
	MaxEntries int
	// Now is the clock for TTLs. If nil, time.Now.
	Now func() time.Time
	// Logger and Registerer are as everywhere in egressd; nil discards.
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Resolver resolves host names to addresses. It is safe for concurrent use.
type Resolver struct {
	opts      Options
	upstreams []string
	search    *dns.ClientConfig // search domains and ndots
	hosts     map[string][]netip.Addr
	metrics   *metrics
	log       *slog.Logger

	// queries shares one query between concurrent look-ups of a name and type.
	queries singleflight.Group

	mu    sync.Mutex
	cache map[cacheKey]*list.Element // of *entry
	// lru orders the cache, most recently used at the front: eviction takes the
	// back, in constant time.
	lru *list.List
}

type cacheKey struct {
	name  string // fully qualified, lower case
	qtype uint16
}

type entry struct {
	key     cacheKey
	addrs   []netip.Addr
	err     error // a negative answer: *NotFoundError
	expires time.Time
}

// NotFoundError is a name with no address of the asked type (NXDOMAIN or NODATA).
type NotFoundError struct{ Name string }

func (e *NotFoundError) Error() string { return "no such host " + e.Name }

// New returns a Resolver. It reads resolv.conf and the hosts file once, now.
func New(opts Options) (*Resolver, error) {
	if opts.ResolvConf == "" {
		opts.ResolvConf = defaults.ResolvConf
	}
	if opts.HostsFile == "" {
		opts.HostsFile = defaults.HostsFile
	}
	if opts.Timeout == 0 {
		opts.Timeout = defaults.DNSTimeout
	}
	if opts.Attempts == 0 {
		opts.Attempts = defaults.DNSAttempts
	}
	if opts.MaxTTL == 0 {
		opts.MaxTTL = defaults.DNSMaxTTL
	}
	if opts.MaxEntries == 0 {
		opts.MaxEntries = defaults.DNSCacheSize
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	conf, err := dns.ClientConfigFromFile(opts.ResolvConf)
	if err != nil {
		conf = &dns.ClientConfig{Ndots: 1, Port: "53"}
	}
	r := &Resolver{
		opts:   opts,
		search: conf,
		log:    opts.Logger,
		cache:  map[cacheKey]*list.Element{},
		lru:    list.New(),
	}
	for _, u := range opts.Upstreams {
		r.upstreams = append(r.upstreams, withPort(u))
	}
	if len(r.upstreams) == 0 {
		for _, s := range conf.Servers {
			r.upstreams = append(r.upstreams, net.JoinHostPort(s, conf.Port))
		}
	}
	if len(r.upstreams) == 0 {
		return nil, fmt.Errorf("no DNS upstreams: set dns.upstreams, or list nameservers in %s", opts.ResolvConf)
	}
	r.hosts, err = readHosts(opts.HostsFile)
	if err != nil {
		r.log.Warn("hosts file not read", "file", opts.HostsFile, "error", err)
	}
	if r.metrics, err = newMetrics(opts.Registerer, r); err != nil {
		return nil, err
	}
	return r, nil
}

func withPort(s string) string {
	if _, _, err := net.SplitHostPort(s); err == nil {
		return s
	}
	return net.JoinHostPort(strings.Trim(s, "[]"), "53")
}

// Upstreams returns the servers queried, in order.
func (r *Resolver) Upstreams() []string { return r.upstreams }

// LookupNetIP returns the addresses of host: network "ip" for both families, "ip4"
// or "ip6" for one. An IP literal is returned as it is.
func (r *Resolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	name := strings.ToLower(strings.TrimSuffix(host, "."))
	if addrs := filterFamily(r.hosts[name], network); len(addrs) > 0 {
		return addrs, nil
	}
	var qtypes []uint16
	switch network {
	case "ip4":
		qtypes = []uint16{dns.TypeA}
	case "ip6":
		qtypes = []uint16{dns.TypeAAAA}
	default:
		qtypes = []uint16{dns.TypeA, dns.TypeAAAA}
	}
	for _, fqdn := range r.search.NameList(strings.ToLower(host)) {
		// Both families at once: a cold dial waits for one round trip, not two.
		waits := make([]<-chan singleflight.Result, len(qtypes))
		results := make([]*entry, len(qtypes))
		for i, qt := range qtypes {
			results[i], waits[i] = r.lookup(cacheKey{fqdn, qt})
		}
		var addrs []netip.Addr
		var errs []error
		for i := range qtypes {
			e := results[i]
			if e == nil {
				select {
				case res := <-waits[i]:
					e = res.Val.(*entry)
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			addrs = append(addrs, e.addrs...)
			if e.err != nil {
				errs = append(errs, e.err)
			}
		}
		if len(addrs) > 0 {
			return addrs, nil
		}
		// The next search name is tried only when this one does not exist; a
		// failure to get an answer at all is reported as it is.
		if !allNotFound(errs) {
			return nil, errors.Join(errs...)
		}
	}
	return nil, &NotFoundError{Name: host}
}

func allNotFound(errs []error) bool {
	for _, err := range errs {
		var nf *NotFoundError
		if !errors.As(err, &nf) {
			return false
		}
	}
	return true
}

func filterFamily(addrs []netip.Addr, network string) []netip.Addr {
	if network != "ip4" && network != "ip6" {
		return addrs
	}
	var out []netip.Addr
	for _, a := range addrs {
		if a.Is4() == (network == "ip4") {
			out = append(out, a)
		}
	}
	return out
}

// lookup answers one name and type from the cache, or returns the channel on which
// the one query for it answers. The query does not take a caller's context: callers
// that give up leave it to finish for the others and for the cache, within Timeout ×
// Attempts × upstreams.
func (r *Resolver) lookup(k cacheKey) (*entry, <-chan singleflight.Result) {
	now := r.opts.Now()
	r.mu.Lock()
	if el := r.cache[k]; el != nil {
		e := el.Value.(*entry)
		if now.Before(e.expires) {
			r.lru.MoveToFront(el)
			r.mu.Unlock()
			r.metrics.cacheHits.Inc()
			return e, nil
		}
		r.lru.Remove(el)
		delete(r.cache, k)
	}
	r.mu.Unlock()
	return nil, r.queries.DoChan(k.name+"/"+strconv.Itoa(int(k.qtype)), func() (any, error) {
		e := r.query(k)
		if e.expires.After(r.opts.Now()) {
			r.mu.Lock()
			r.store(e)
			r.mu.Unlock()
		}
		return e, nil
	})
}

// store adds e to the cache, evicting the least recently used entry when full.
// r.mu is held.
func (r *Resolver) store(e *entry) {
	if el := r.cache[e.key]; el != nil {
		el.Value = e
		r.lru.MoveToFront(el)
		return
	}
	if r.lru.Len() >= r.opts.MaxEntries {
		oldest := r.lru.Back()
		r.lru.Remove(oldest)
		delete(r.cache, oldest.Value.(*entry).key)
	}
	r.cache[e.key] = r.lru.PushFront(e)
}

// cacheLen is for the cache-entries gauge.
func (r *Resolver) cacheLen() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.cache)
}

// query asks the upstreams about k, Attempts rounds at most, and returns the entry to
// cache. An entry that expires now is not cached (a failure).
func (r *Resolver) query(k cacheKey) *entry {
	m := new(dns.Msg)
	m.SetQuestion(k.name, k.qtype)
	m.RecursionDesired = true
	start := r.opts.Now()
	var lastErr error
	for attempt := 0; attempt < r.opts.Attempts; attempt++ {
		for _, up := range r.upstreams {
			resp, err := r.exchange(m, up)
			if err != nil {
				lastErr = err
				r.metrics.queries.WithLabelValues(resultOf(err)).Inc()
				continue
			}
			switch resp.Rcode {
			case dns.RcodeSuccess, dns.RcodeNameError:
			default:
				lastErr = fmt.Errorf("%s answered %s for %s", up, dns.RcodeToString[resp.Rcode], strings.TrimSuffix(k.name, "."))
				r.metrics.queries.WithLabelValues("servfail").Inc()
				continue
			}
			r.metrics.duration.Observe(r.opts.Now().Sub(start).Seconds())
			return r.entryFrom(k, resp)
		}
	}
	return &entry{key: k, err: fmt.Errorf("resolving %s: %w", strings.TrimSuffix(k.name, "."), lastErr), expires: start}
}

// exchange sends m to one upstream over UDP, and again over TCP when the answer
// was truncated.
func (r *Resolver) exchange(m *dns.Msg, upstream string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), r.opts.Timeout)
	defer cancel()
	c := &dns.Client{Net: "udp", Timeout: r.opts.Timeout, UDPSize: dns.DefaultMsgSize}
	resp, _, err := c.ExchangeContext(ctx, m, upstream)
	if err == nil && resp.Truncated {
		c.Net = "tcp"
		resp, _, err = c.ExchangeContext(ctx, m, upstream)
	}
	if err != nil {
		return nil, err
	}
	if resp.Id != m.Id {
		return nil, errors.New("answer id mismatch")
	}
	return resp, nil
}

// entryFrom turns an answer into a cache entry with a clamped TTL.
func (r *Resolver) entryFrom(k cacheKey, resp *dns.Msg) *entry {
	now := r.opts.Now()
	var addrs []netip.Addr
	ttl := uint32(1<<32 - 1)
	for _, rr := range resp.Answer {
		switch v := rr.(type) {
		case *dns.A:
			if k.qtype == dns.TypeA {
				if a, ok := netip.AddrFromSlice(v.A.To4()); ok {
					addrs = append(addrs, a)
					ttl = min(ttl, rr.Header().Ttl)
				}
			}
		case *dns.AAAA:
			if k.qtype == dns.TypeAAAA {
				if a, ok := netip.AddrFromSlice(v.AAAA.To16()); ok {
					addrs = append(addrs, a)
					ttl = min(ttl, rr.Header().Ttl)
				}
			}
		case *dns.CNAME:
			ttl = min(ttl, rr.Header().Ttl)
		}
	}
	if len(addrs) > 0 {
		r.metrics.queries.WithLabelValues("success").Inc()
		return &entry{key: k, addrs: addrs, expires: now.Add(r.clamp(time.Duration(ttl) * time.Second))}
	}
	// NXDOMAIN or NODATA: cached for the SOA minimum (RFC 2308).
	result := "nodata"
	if resp.Rcode == dns.RcodeNameError {
		result = "nxdomain"
	}
	r.metrics.queries.WithLabelValues(result).Inc()
	neg := time.Duration(0)
	for _, rr := range resp.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			neg = time.Duration(min(soa.Minttl, soa.Hdr.Ttl)) * time.Second
		}
	}
	return &entry{key: k, err: &NotFoundError{Name: strings.TrimSuffix(k.name, ".")}, expires: now.Add(r.clamp(neg))}
}

func (r *Resolver) clamp(ttl time.Duration) time.Duration {
	return min(max(ttl, r.opts.MinTTL), r.opts.MaxTTL)
}

func resultOf(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	return "error"
}
