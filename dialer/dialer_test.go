package dialer

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/egressd/egressd/guard"
)

// stallResolver never answers; it records what it was asked.
type stallResolver struct{ asked []string }

func (r *stallResolver) LookupNetIP(ctx context.Context, _, host string) ([]netip.Addr, error) {
	r.asked = append(r.asked, host)
	<-ctx.Done()
	return nil, ctx.Err()
}

func TestDialTimeoutIs504(t *testing.T) {
	res := &stallResolver{}
	d := New(Options{Resolver: res, Timeout: 50 * time.Millisecond})
	_, err := d.Dial(context.Background(), "slow.invalid", 443)
	var de *Error
	if !errors.As(err, &de) || de.Status != http.StatusGatewayTimeout || de.Reason != "timeout" {
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
	d := New(Options{Resolver: failResolver{}, Timeout: time.Second})
	_, err := d.Dial(context.Background(), "nxdomain.invalid", 80)
	var de *Error
	if !errors.As(err, &de) || de.Status != http.StatusBadGateway || de.Reason != "dns" {
		t.Fatalf("dial of an unresolvable name = %v; want a 502 dns error", err)
	}
	if want := "cannot resolve nxdomain.invalid:80: no such host"; de.Error() != want {
		t.Errorf("error = %q; want %q", de.Error(), want)
	}
}

func TestOwnListenersAreLoops(t *testing.T) {
	d := New(Options{})
	d.AddOwn(tcpAddr("127.0.0.1:3128"))
	d.AddOwn(tcpAddr("0.0.0.0:9090"))
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
		if got := d.IsOwn(netip.MustParseAddrPort(tt.ap)); got != tt.loop {
			t.Errorf("IsOwn(%s) = %v; want %v", tt.ap, got, tt.loop)
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
			d := New(Options{Resolver: answers, Timeout: time.Second, Guard: guard.New(private), Exempt: ex, Connect: rec.connect})
			_, err := d.Dial(context.Background(), "internal.example.com", 443)
			var got []string
			for _, ap := range rec.asked {
				got = append(got, ap.String())
			}
			if !slices.Equal(got, tt.wantAsked) {
				t.Errorf("dialer asked for %v; want %v", got, tt.wantAsked)
			}
			var de *Error
			if !errors.As(err, &de) {
				t.Fatalf("dial error = %v; want an *Error", err)
			}
			if tt.wantErr != "" {
				if !de.Refused() || de.Reason != "private address" || de.Hint() != tt.wantErr {
					t.Errorf("refusal = %d %q %q; want 403 \"private address\" %q", de.Status, de.Reason, de.Hint(), tt.wantErr)
				}
			} else if de.Refused() {
				t.Errorf("dial refused (%v); want the exempt or public address dialled", de)
			}
		})
	}
}

// recordingResolver answers every name with one address and records the names.
type recordingResolver struct {
	mu    sync.Mutex
	asked []string
}

func (r *recordingResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	r.asked = append(r.asked, host)
	r.mu.Unlock()
	return []netip.Addr{netip.MustParseAddr("93.184.215.14")}, nil
}

// TestDialContextNormalizes: what an http.Client hands DialContext is resolved as
// the policy names it, never in a spelling that only maps to the name.
func TestDialContextNormalizes(t *testing.T) {
	tests := []struct{ addr, want string }{
		{"ok\uff0ewild.test:443", "ok.wild.test"},
		{"OK.Wild.Test.:443", "ok.wild.test"},
		{"b\u00fccher.example:80", "xn--bcher-kva.example"},
	}
	for _, tt := range tests {
		res := &recordingResolver{}
		rec := &recordingDialer{}
		d := New(Options{Resolver: res, Connect: rec.connect})
		d.DialContext(context.Background(), "tcp", tt.addr)
		if len(res.asked) != 1 || res.asked[0] != tt.want {
			t.Errorf("DialContext(%q) asked the resolver for %q; want [%q]", tt.addr, res.asked, tt.want)
		}
	}
}
