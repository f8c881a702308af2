package e2e

import (
	"encoding/json"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/internal/dnstest"
)

// countingOrigin is an echo origin on addr that counts the connections it accepts.
func countingOrigin(t *testing.T, addr string) (string, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	return tcpOrigin(t, addr, func(c net.Conn) {
		n.Add(1)
		io.Copy(c, c)
	}), &n
}

// tcpOrigin serves every connection accepted on addr with handle, on a goroutine of
// its own, and closes it after; it returns the address. The listener closes when the
// test ends.
func tcpOrigin(t *testing.T, addr string, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}

func TestPrivateAddressGuard(t *testing.T) {
	t.Parallel()
	origin, hits := countingOrigin(t, "127.0.0.1:0")
	op := port(t, origin)
	zone := map[string]dnstest.Record{"svc.test": {A: []string{"127.0.0.1"}, TTL: 60}}

	t.Run("a name resolving to loopback is refused and nothing is dialled", func(t *testing.T) {
		d := startDaemon(t, daemonConfig{zone: zone, files: map[string]string{"allow.d/a.txt": "svc.test:" + op + "\n"}})
		got, err := openTunnelErr(d.proxy, "svc.test:"+op)
		if err != nil || !strings.HasPrefix(got, "HTTP/1.1 403") {
			t.Fatalf("CONNECT svc.test = %q, %v; want 403", got, err)
		}
		out, _ := curl(t, nil, "-x", d.proxyURL(), "-i", "http://svc.test:"+op+"/")
		for _, want := range []string{
			"403 Forbidden",
			"X-Egressd-Denied: private address",
			"egressd: denied svc.test:" + op + ": private address; hint: svc.test resolves to 127.0.0.1, a loopback address; add 127.0.0.1/32 to the allowlist if that is intended",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("HTTP through the proxy lacks %q:\n%s", want, out)
			}
		}
		if n := hits.Load(); n != 0 {
			t.Errorf("the origin accepted %d connections; want none", n)
		}
		if v := d.metric(`egressd_requests_total{decision="deny",kind="connect"}`); v != 1 {
			t.Errorf("connect deny count = %v; want 1", v)
		}
	})
	t.Run("an allowlist CIDR rule exempts the range; the port stays the host rule's", func(t *testing.T) {
		d := startDaemon(t, daemonConfig{zone: zone, files: map[string]string{"allow.d/a.txt": "svc.test:" + op + "\n127.0.0.0/8\n"}})
		c := openTunnel(t, d.proxy, "svc.test:"+op)
		defer c.Close()
		if err := roundTrip(c, "through"); err != nil {
			t.Fatalf("tunnel to svc.test: %v", err)
		}
		if got, _ := openTunnelErr(d.proxy, "svc.test:81"); !strings.HasPrefix(got, "HTTP/1.1 403") {
			t.Errorf("CONNECT svc.test:81 = %q; want 403 (the host rule names port %s only)", got, op)
		}
	})
	t.Run("an unresolvable allowed name is 502", func(t *testing.T) {
		d := startDaemon(t, daemonConfig{zone: zone, files: map[string]string{"allow.d/a.txt": "missing.test\n"}})
		out, _ := curl(t, nil, "-x", d.proxyURL(), "-w", "\n%{http_code}", "http://missing.test/")
		if !strings.HasSuffix(out, "\n502") || !strings.Contains(out, "cannot resolve missing.test:80") {
			t.Errorf("unresolvable name = %q; want 502 naming it", out)
		}
		if v := d.metric(`egressd_dns_queries_total{result="nxdomain"}`); v < 1 {
			t.Errorf(`egressd_dns_queries_total{result="nxdomain"} = %v; want >= 1`, v)
		}
	})
}

// TestDNSRebinding serves a name whose answer changes from 127.0.0.1 to 127.0.0.2
// between queries, with only 127.0.0.1 exempt from the guard: the second answer is
// refused and never dialled.
func TestDNSRebinding(t *testing.T) {
	t.Parallel()
	first, firstHits := countingOrigin(t, "127.0.0.1:0")
	op := port(t, first)
	_, secondHits := countingOrigin(t, "127.0.0.2:"+op)
	d := startDaemon(t, daemonConfig{
		zone:  map[string]dnstest.Record{"rebind.test": {Sequence: [][]string{{"127.0.0.1"}, {"127.0.0.2"}}, TTL: 0}},
		dns:   "  min_ttl: 0s\n",
		files: map[string]string{"allow.d/a.txt": "rebind.test:" + op + "\n127.0.0.1/32\n"},
	})
	c := openTunnel(t, d.proxy, "rebind.test:"+op)
	if err := roundTrip(c, "first"); err != nil {
		t.Fatalf("first tunnel: %v", err)
	}
	c.Close()
	for i := 0; i < 3; i++ {
		got, err := openTunnelErr(d.proxy, "rebind.test:"+op)
		if err != nil || !strings.HasPrefix(got, "HTTP/1.1 403") {
			t.Errorf("tunnel %d after the answer changed = %q, %v; want 403", i+2, got, err)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if n := secondHits.Load(); n != 0 {
		t.Errorf("127.0.0.2 accepted %d connections; want none", n)
	}
	if n := firstHits.Load(); n != 1 {
		t.Errorf("127.0.0.1 accepted %d connections; want 1", n)
	}
}

func TestDNSListener(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, daemonConfig{
		zone:  map[string]dnstest.Record{"api.test": {A: []string{"127.0.0.1", "127.0.0.9"}, TTL: 60}, "other.test": {A: []string{"127.0.0.1"}, TTL: 60}},
		dns:   "  listen: 127.0.0.1:0\n",
		files: map[string]string{"allow.d/a.txt": "api.test\n127.0.0.1/32\n"},
	})
	var line struct {
		DNS string `json:"dns_listener"`
	}
	json.Unmarshal([]byte(d.logs.find(`"msg":"egressd started"`)), &line)
	if line.DNS == "" {
		t.Fatal("egressd did not log its DNS listener address")
	}
	ask := func(name string) (*dns.Msg, error) {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		c := &dns.Client{Timeout: 2 * time.Second}
		r, _, err := c.Exchange(m, line.DNS)
		return r, err
	}
	r, err := ask("api.test.")
	if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "127.0.0.1" {
		t.Errorf("api.test = %v, %v; want only 127.0.0.1 (127.0.0.9 refused by the guard)", r, err)
	}
	r, err = ask("other.test.")
	if err != nil || r.Rcode != dns.RcodeRefused {
		t.Errorf("other.test = %v, %v; want REFUSED", r, err)
	}
	if v := d.metric(`egressd_dns_listener_queries_total{result="refused"}`); v != 1 {
		t.Errorf("refused count = %v; want 1", v)
	}
}
