package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/egressd/egressd/guard"
)

func TestMetricNamesLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := New(Options{Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

func TestSplitTarget(t *testing.T) {
	tests := []struct {
		in      string
		def     uint16
		host    string
		port    uint16
		wantErr bool
	}{
		{"api.example.com:8443", 0, "api.example.com", 8443, false},
		{"api.example.com", 443, "api.example.com", 443, false},
		{"api.example.com", 0, "", 0, true},
		{"[2001:db8::1]:443", 0, "2001:db8::1", 443, false},
		{"[2001:db8::1]", 80, "2001:db8::1", 80, false},
		{"host:0", 0, "", 0, true},
		{"host:65536", 0, "", 0, true},
		{"host:http", 0, "", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			host, port, err := SplitTarget(tt.in, tt.def)
			if (err != nil) != tt.wantErr || host != tt.host || port != tt.port {
				t.Errorf("SplitTarget(%q, %d) = %q, %d, %v; want %q, %d, error %v", tt.in, tt.def, host, port, err, tt.host, tt.port, tt.wantErr)
			}
		})
	}
	if _, _, err := URLTarget(&url.URL{Scheme: "ftp", Host: "example.com"}); err == nil {
		t.Errorf("URLTarget(ftp://example.com) accepted; want an error naming the scheme")
	}
}

func TestRemoveHopByHop(t *testing.T) {
	h := http.Header{
		"Connection":          {"X-A, close", "X-B"},
		"X-A":                 {"1"},
		"X-B":                 {"2"},
		"Keep-Alive":          {"timeout=5"},
		"Proxy-Connection":    {"keep-alive"},
		"Proxy-Authorization": {"Basic x"},
		"Te":                  {"trailers"},
		"Trailer":             {"X-T"},
		"Upgrade":             {"h2c"},
		"X-End-To-End":        {"kept"},
	}
	removeHopByHop(h)
	if len(h) != 1 || h.Get("X-End-To-End") != "kept" {
		t.Errorf("after removeHopByHop: %v; want only X-End-To-End", h)
	}
	ws := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Keep-Alive": {"1"}}
	removeHopByHop(ws)
	if ws.Get("Upgrade") != "websocket" || ws.Get("Connection") != "Upgrade" || ws.Get("Keep-Alive") != "" {
		t.Errorf("websocket upgrade headers after removeHopByHop: %v", ws)
	}
}

// stallResolver never answers; it records what it was asked.
type stallResolver struct{ asked []string }

func (r *stallResolver) LookupNetIP(ctx context.Context, _, host string) ([]netip.Addr, error) {
	r.asked = append(r.asked, host)
	<-ctx.Done()
	return nil, ctx.Err()
}

func TestDialTimeoutIs504(t *testing.T) {
	res := &stallResolver{}
	d := &dialer{resolver: res, timeout: 50 * time.Millisecond}
	_, err := d.dial(context.Background(), "slow.invalid", 443)
	var de *dialError
	if !errors.As(err, &de) || de.status != http.StatusGatewayTimeout || de.reason != "timeout" {
		t.Fatalf("dial with a stalled resolver = %v; want a 504 timeout", err)
	}
	if len(res.asked) != 1 || res.asked[0] != "slow.invalid" {
		t.Errorf("resolver asked %q; want [slow.invalid]", res.asked)
	}
}

// failResolver fails every lookup at once, as NXDOMAIN would.
type failResolver struct{}

func (failResolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	return nil, errors.New("no such host")
}

func TestDNSFailureIs502(t *testing.T) {
	d := &dialer{resolver: failResolver{}, timeout: time.Second}
	_, err := d.dial(context.Background(), "nxdomain.invalid", 80)
	var de *dialError
	if !errors.As(err, &de) || de.status != http.StatusBadGateway || de.reason != "dns" {
		t.Fatalf("dial of an unresolvable name = %v; want a 502 dns error", err)
	}
	if want := "cannot resolve nxdomain.invalid:80: no such host"; de.Error() != want {
		t.Errorf("error = %q; want %q", de.Error(), want)
	}
}

func TestOwnListenersAreLoops(t *testing.T) {
	d := &dialer{}
	d.addOwn(tcpAddr("127.0.0.1:3128"))
	d.addOwn(tcpAddr("0.0.0.0:9090"))
	tests := []struct {
		ap   string
		loop bool
	}{
		{"127.0.0.1:3128", true},
		{"127.0.0.2:3128", false},
		{"127.0.0.1:9090", true},
		{"127.0.0.5:9090", true},
		{"[::1]:9090", true},
		{"127.0.0.1:8080", false},
	}
	for _, tt := range tests {
		if got := d.isOwn(netip.MustParseAddrPort(tt.ap)); got != tt.loop {
			t.Errorf("isOwn(%s) = %v; want %v", tt.ap, got, tt.loop)
		}
	}
}

type tcpAddr string

func (a tcpAddr) Network() string { return "tcp" }
func (a tcpAddr) String() string  { return string(a) }

// recordingDialer is a test double for the connect step: it records every address it
// is asked for and connects nowhere.
type recordingDialer struct {
	mu    sync.Mutex
	asked []netip.AddrPort
}

func (r *recordingDialer) connect(_ context.Context, ap netip.AddrPort) (net.Conn, error) {
	r.mu.Lock()
	r.asked = append(r.asked, ap)
	r.mu.Unlock()
	return nil, syscall.ECONNREFUSED
}

// fixedResolver answers every name with the same addresses.
type fixedResolver []netip.Addr

func (f fixedResolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	return f, nil
}

type exemptPrefixes []netip.Prefix

func (e exemptPrefixes) Exempt(a netip.Addr) bool {
	for _, p := range e {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func TestGuardBeforeDial(t *testing.T) {
	tests := []struct {
		name      string
		answers   []string
		exempt    []string // allowlist CIDR rules
		private   []string // dns.allow_private
		wantAsked []string // addresses the dialer may be asked for, in order
		wantErr   string
	}{
		{
			name:    "metadata address",
			answers: []string{"169.254.169.254"},
			wantErr: "internal.example.com resolves to 169.254.169.254, a link-local address; add 169.254.169.254/32 to the allowlist if that is intended",
		},
		{
			name:    "mapped IPv6 is checked as IPv4",
			answers: []string{"::ffff:169.254.169.254"},
			wantErr: "internal.example.com resolves to 169.254.169.254, a link-local address; add 169.254.169.254/32 to the allowlist if that is intended",
		},
		{
			name:    "every private answer",
			answers: []string{"10.0.0.1", "192.168.1.1", "fd00::1"},
			wantErr: "internal.example.com resolves to 10.0.0.1, a private address; add 10.0.0.1/32 to the allowlist if that is intended",
		},
		{
			name:      "denied answers are skipped",
			answers:   []string{"10.0.0.1", "198.51.100.7", "93.184.215.14"},
			wantAsked: []string{"93.184.215.14:443"},
		},
		{
			name:      "an allowlist CIDR rule exempts its range",
			answers:   []string{"10.20.0.5", "169.254.169.254"},
			exempt:    []string{"10.20.0.0/16"},
			wantAsked: []string{"10.20.0.5:443"},
		},
		{
			name:      "dns.allow_private exempts its range",
			answers:   []string{"172.16.3.4"},
			private:   []string{"172.16.0.0/12"},
			wantAsked: []string{"172.16.3.4:443"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recordingDialer{}
			var answers fixedResolver
			for _, a := range tt.answers {
				answers = append(answers, netip.MustParseAddr(a))
			}
			var ex exemptPrefixes
			for _, p := range tt.exempt {
				ex = append(ex, netip.MustParsePrefix(p))
			}
			var private []netip.Prefix
			for _, p := range tt.private {
				private = append(private, netip.MustParsePrefix(p))
			}
			d := &dialer{resolver: answers, timeout: time.Second, guard: guard.New(private), exempt: ex, connect: rec.connect}
			_, err := d.dial(context.Background(), "internal.example.com", 443)
			var got []string
			for _, ap := range rec.asked {
				got = append(got, ap.String())
			}
			if !slices.Equal(got, tt.wantAsked) {
				t.Errorf("dialer asked for %v; want %v", got, tt.wantAsked)
			}
			var de *dialError
			if !errors.As(err, &de) {
				t.Fatalf("dial error = %v; want a dialError", err)
			}
			if tt.wantErr != "" {
				if !de.refused() || de.reason != "private address" || de.hint() != tt.wantErr {
					t.Errorf("refusal = %d %q %q; want 403 \"private address\" %q", de.status, de.reason, de.hint(), tt.wantErr)
				}
			} else if de.refused() {
				t.Errorf("dial refused (%v); want the exempt or public address dialled", de)
			}
		})
	}
}
