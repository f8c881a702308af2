package resolver

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/dnstest"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// newTest returns a resolver that asks only srv, with no hosts entries and no search
// domains unless the test writes them.
func newTest(t *testing.T, opts Options, upstreams ...string) (*Resolver, *fakeClock) {
	t.Helper()
	dir := t.TempDir()
	clock := &fakeClock{now: time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)}
	if opts.HostsFile == "" {
		opts.HostsFile = filepath.Join(dir, "hosts")
		os.WriteFile(opts.HostsFile, []byte("127.0.0.1 localhost\n"), 0o644)
	}
	if opts.ResolvConf == "" {
		opts.ResolvConf = filepath.Join(dir, "resolv.conf")
		os.WriteFile(opts.ResolvConf, []byte("nameserver 127.0.0.1\n"), 0o644)
	}
	opts.Upstreams = upstreams
	opts.Now = clock.Now
	opts.Timeout = 500 * time.Millisecond
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return r, clock
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func TestLookup(t *testing.T) {
	srv := dnstest.Start(t, map[string]dnstest.Record{
		"api.test":    {A: []string{"127.0.0.1", "127.0.0.2"}, AAAA: []string{"::1"}, TTL: 60},
		"v4only.test": {A: []string{"127.0.0.3"}, TTL: 60},
		"big.test":    {A: []string{"127.0.0.4"}, TTL: 60, Truncate: true},
	})
	r, _ := newTest(t, Options{}, srv.Addr)
	tests := []struct {
		host, network string
		want          []netip.Addr
	}{
		{"api.test", "ip", addrs("127.0.0.1", "127.0.0.2", "::1")},
		{"API.Test.", "ip4", addrs("127.0.0.1", "127.0.0.2")},
		{"api.test", "ip6", addrs("::1")},
		{"v4only.test", "ip", addrs("127.0.0.3")},
		{"big.test", "ip4", addrs("127.0.0.4")}, // truncated over UDP, answered over TCP
		{"localhost", "ip", addrs("127.0.0.1")}, // from the hosts file
		{"127.0.0.9", "ip", addrs("127.0.0.9")}, // an address is itself
	}
	for _, tt := range tests {
		t.Run(tt.host+"/"+tt.network, func(t *testing.T) {
			got, err := r.LookupNetIP(context.Background(), tt.network, tt.host)
			if err != nil || !slices.Equal(got, tt.want) {
				t.Errorf("LookupNetIP(%q, %q) = %v, %v; want %v", tt.network, tt.host, got, err, tt.want)
			}
		})
	}
	if n := srv.Queries("localhost", "A"); n != 0 {
		t.Errorf("localhost was queried upstream %d times; want 0 (the hosts file answers it)", n)
	}
	_, err := r.LookupNetIP(context.Background(), "ip", "missing.test")
	var nf *NotFoundError
	if !errors.As(err, &nf) {
		t.Errorf("LookupNetIP(missing.test) error = %v; want NotFoundError", err)
	}
}

func TestCacheHonoursTTL(t *testing.T) {
	srv := dnstest.Start(t, map[string]dnstest.Record{
		"short.test": {A: []string{"127.0.0.1"}, TTL: 10},
		"long.test":  {A: []string{"127.0.0.1"}, TTL: 86400},
		"zero.test":  {A: []string{"127.0.0.1"}, TTL: 0},
	})
	r, clock := newTest(t, Options{MinTTL: 2 * time.Second, MaxTTL: time.Minute}, srv.Addr)
	look := func(name string) {
		t.Helper()
		if _, err := r.LookupNetIP(context.Background(), "ip4", name); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		advance time.Duration
		name    string
		queries int // upstream A queries for name so far
	}{
		{0, "short.test", 1},
		{9 * time.Second, "short.test", 1}, // within the TTL: cached
		{2 * time.Second, "short.test", 2}, // past it: asked again
		{0, "long.test", 1},
		{59 * time.Second, "long.test", 1}, // capped at MaxTTL = 1m ...
		{2 * time.Second, "long.test", 2},  // ... so asked again after it
		{0, "zero.test", 1},
		{time.Second, "zero.test", 1}, // raised to MinTTL = 2s
		{2 * time.Second, "zero.test", 2},
		{0, "missing.test", 1}, // NXDOMAIN, cached for the SOA minimum (30s, within the caps)
		{29 * time.Second, "missing.test", 1},
		{2 * time.Second, "missing.test", 2},
	}
	for i, s := range steps {
		clock.Advance(s.advance)
		if s.name == "missing.test" {
			r.LookupNetIP(context.Background(), "ip4", s.name)
		} else {
			look(s.name)
		}
		if got := srv.Queries(s.name, "A"); got != s.queries {
			t.Fatalf("step %d (%s after +%v): %d upstream queries; want %d", i, s.name, s.advance, got, s.queries)
		}
	}
}

func TestConcurrentLookupsShareOneQuery(t *testing.T) {
	srv := dnstest.Start(t, map[string]dnstest.Record{
		"slow.test": {A: []string{"127.0.0.1"}, TTL: 60, Delay: 200 * time.Millisecond},
	})
	r, _ := newTest(t, Options{}, srv.Addr)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := r.LookupNetIP(context.Background(), "ip4", "slow.test"); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := srv.Queries("slow.test", "A"); n != 1 {
		t.Errorf("20 concurrent look-ups sent %d queries; want 1", n)
	}
}

func TestSearchDomains(t *testing.T) {
	srv := dnstest.Start(t, map[string]dnstest.Record{
		"api.svc.test":      {A: []string{"127.0.0.5"}, TTL: 60},
		"a.b.test":          {A: []string{"127.0.0.6"}, TTL: 60},
		"a.b.test.svc.test": {A: []string{"127.0.0.7"}, TTL: 60},
	})
	conf := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(conf, []byte("nameserver 127.0.0.1\nsearch svc.test\noptions ndots:2\n"), 0o644)
	r, _ := newTest(t, Options{ResolvConf: conf}, srv.Addr)
	tests := []struct {
		host string
		want []netip.Addr
	}{
		{"api", addrs("127.0.0.5")},      // fewer dots than ndots: the search name
		{"a.b.test", addrs("127.0.0.6")}, // ndots or more: the name as it is first
	}
	for _, tt := range tests {
		got, err := r.LookupNetIP(context.Background(), "ip4", tt.host)
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("LookupNetIP(%q) = %v, %v; want %v", tt.host, got, err, tt.want)
		}
	}
}

func TestFailover(t *testing.T) {
	srv := dnstest.Start(t, map[string]dnstest.Record{"api.test": {A: []string{"127.0.0.1"}, TTL: 60}})
	// A loopback UDP port with nothing behind it: the query fails at once.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := pc.LocalAddr().String()
	pc.Close()
	r, _ := newTest(t, Options{}, dead, srv.Addr)
	got, err := r.LookupNetIP(context.Background(), "ip4", "api.test")
	if err != nil || !slices.Equal(got, addrs("127.0.0.1")) {
		t.Errorf("with a dead first upstream: %v, %v; want 127.0.0.1 from the second", got, err)
	}
}

func TestCacheIsBounded(t *testing.T) {
	zone := map[string]dnstest.Record{}
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		zone[n+".test"] = dnstest.Record{A: []string{"127.0.0.1"}, TTL: 60}
	}
	srv := dnstest.Start(t, zone)
	r, _ := newTest(t, Options{MaxEntries: 3}, srv.Addr)
	for name := range zone {
		r.LookupNetIP(context.Background(), "ip4", name)
	}
	if n := r.cacheLen(); n > 3 {
		t.Errorf("cache holds %d entries; want at most 3", n)
	}
}

// TestBothFamiliesAtOnce: a cold look-up asks for A and AAAA together, so a dial
// waits for one round trip, not two.
func TestBothFamiliesAtOnce(t *testing.T) {
	srv := dnstest.Start(t, map[string]dnstest.Record{
		"slow.test": {A: []string{"192.0.2.1"}, AAAA: []string{"2001:db8::1"}, TTL: 60, Delay: 200 * time.Millisecond},
	})
	r, _ := newTest(t, Options{}, srv.Addr)
	got, err := r.LookupNetIP(context.Background(), "ip", "slow.test")
	if err != nil || len(got) != 2 {
		t.Fatalf("LookupNetIP = %v, %v", got, err)
	}
	if n := srv.MaxConcurrent(); n != 2 {
		t.Errorf("the server answered at most %d queries at once; want the A and AAAA queries together (2)", n)
	}
}

// TestCacheEvictsLeastRecentlyUsed: a full cache drops the entry used longest ago.
func TestCacheEvictsLeastRecentlyUsed(t *testing.T) {
	zone := map[string]dnstest.Record{}
	for _, n := range []string{"a.test", "b.test", "c.test"} {
		zone[n] = dnstest.Record{A: []string{"192.0.2.1"}, TTL: 60}
	}
	srv := dnstest.Start(t, zone)
	r, _ := newTest(t, Options{MaxEntries: 2}, srv.Addr)
	ctx := context.Background()
	r.LookupNetIP(ctx, "ip4", "a.test")
	r.LookupNetIP(ctx, "ip4", "b.test")
	r.LookupNetIP(ctx, "ip4", "a.test") // a is now the most recently used
	r.LookupNetIP(ctx, "ip4", "c.test") // evicts b
	r.LookupNetIP(ctx, "ip4", "a.test")
	r.LookupNetIP(ctx, "ip4", "b.test")
	if n := srv.Queries("a.test", "A"); n != 1 {
		t.Errorf("a.test asked %d times; want 1: it was used recently and stayed cached", n)
	}
	if n := srv.Queries("b.test", "A"); n != 2 {
		t.Errorf("b.test asked %d times; want 2: it was the least recently used and was evicted", n)
	}
}
