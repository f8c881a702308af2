package dnsserver

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/internal/dnstest"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/resolver"
)

type fixedPolicy struct{ m *policy.Matcher }

func (f fixedPolicy) Policy() *policy.Matcher { return f.m }

func TestListener(t *testing.T) {
	upstream := dnstest.Start(t, map[string]dnstest.Record{
		"api.test":    {A: []string{"127.0.0.1", "127.0.0.2"}, AAAA: []string{"::1"}, TTL: 60},
		"a.wild.test": {A: []string{"127.0.0.3"}, TTL: 60},
		"denied.test": {A: []string{"127.0.0.1"}, TTL: 60},
	})
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "hosts"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte("nameserver 127.0.0.1\n"), 0o644)
	res, err := resolver.New(resolver.Options{Upstreams: []string{upstream.Addr}, HostsFile: filepath.Join(dir, "hosts"), ResolvConf: filepath.Join(dir, "resolv.conf")})
	if err != nil {
		t.Fatal(err)
	}
	var rules []policy.Rule
	for i, s := range []string{"api.test:8443", "*.wild.test", "ghost.test", "127.0.0.1/32", "127.0.0.3/32"} {
		r, err := policy.ParseRule(s)
		if err != nil {
			t.Fatal(err)
		}
		r.Line = i + 1
		rules = append(rules, r)
	}
	m, _ := policy.Compile(rules, policy.Options{})

	start := func(t *testing.T, nx bool) string {
		srv, err := New(Options{Policy: fixedPolicy{m}, Resolver: res, NXDomain: nx})
		if err != nil {
			t.Fatal(err)
		}
		pc, ln, err := Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(pc, ln)
		t.Cleanup(func() { srv.Shutdown(context.Background()) })
		return pc.LocalAddr().String()
	}
	addr := start(t, false)
	nxAddr := start(t, true)

	tests := []struct {
		server string
		name   string
		qtype  uint16
		rcode  int
		want   []string
	}{
		// 127.0.0.2 is loopback with no rule covering it: removed from the answer.
		{addr, "api.test.", dns.TypeA, dns.RcodeSuccess, []string{"127.0.0.1"}},
		{addr, "API.test.", dns.TypeAAAA, dns.RcodeSuccess, nil}, // ::1 refused by the guard
		{addr, "a.wild.test.", dns.TypeA, dns.RcodeSuccess, []string{"127.0.0.3"}},
		{addr, "denied.test.", dns.TypeA, dns.RcodeRefused, nil},
		{addr, "wild.test.", dns.TypeA, dns.RcodeRefused, nil},
		{addr, "ghost.test.", dns.TypeA, dns.RcodeNameError, nil}, // allowed, but it does not exist
		{addr, "api.test.", dns.TypeMX, dns.RcodeSuccess, nil},
		{nxAddr, "denied.test.", dns.TypeA, dns.RcodeNameError, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name+dns.TypeToString[tt.qtype], func(t *testing.T) {
			for _, network := range []string{"udp", "tcp"} {
				msg := new(dns.Msg)
				msg.SetQuestion(tt.name, tt.qtype)
				c := &dns.Client{Net: network, Timeout: 2 * time.Second}
				resp, _, err := c.Exchange(msg, tt.server)
				if err != nil {
					t.Fatalf("%s query: %v", network, err)
				}
				var got []string
				for _, rr := range resp.Answer {
					switch v := rr.(type) {
					case *dns.A:
						got = append(got, v.A.String())
					case *dns.AAAA:
						got = append(got, v.AAAA.String())
					}
				}
				if resp.Rcode != tt.rcode || !slices.Equal(got, tt.want) {
					t.Errorf("%s %s %s = %s %v; want %s %v", network, tt.name, dns.TypeToString[tt.qtype],
						dns.RcodeToString[resp.Rcode], got, dns.RcodeToString[tt.rcode], tt.want)
				}
			}
		})
	}
}
