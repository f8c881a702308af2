// Package dnstest runs a real DNS server (github.com/miekg/dns) on loopback for
// tests, serving fixture records. It lets tests resolve names without asking the
// machine's own nameservers: every answer comes from the fixtures.
package dnstest

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Record is what the server answers for one name.
type Record struct {
	A, AAAA []string // addresses; the answer for the type asked
	TTL     uint32
	// Sequence, if set, replaces A: the n-th A query gets Sequence[min(n, len-1)].
	// A rebinding name answers one address first and another later.
	Sequence [][]string
	// Truncate answers UDP queries with the TC bit and no records, so that the
	// client must retry over TCP.
	Truncate bool
	// Delay holds each answer back this long, so that concurrent queries overlap.
	Delay time.Duration
}

// NegativeTTL is the SOA minimum the server gives with NXDOMAIN and NODATA answers.
const NegativeTTL = 30

// Server is a running fixture DNS server on 127.0.0.1, UDP and TCP on one port.
type Server struct {
	Addr string

	mu      sync.Mutex
	busy    int               // queries being answered now
	maxBusy int               // the most at once
	records map[string]Record // by fully qualified lower-case name
	queries map[string]int    // "name/TYPE" -> count
	udp     *dns.Server
	tcp     *dns.Server
}

// Start runs a server for zone (names without the trailing dot are fine) and stops
// it when the test ends.
func Start(t testing.TB, zone map[string]Record) *Server {
	t.Helper()
	s := &Server{records: map[string]Record{}, queries: map[string]int{}}
	for name, r := range zone {
		s.Set(name, r)
	}
	var err error
	for i := 0; i < 20; i++ {
		if err = s.listen(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("dnstest: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

func (s *Server) listen() error {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		return err
	}
	s.Addr = pc.LocalAddr().String()
	s.udp = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(s.serve(true))}
	s.tcp = &dns.Server{Listener: ln, Handler: dns.HandlerFunc(s.serve(false))}
	started := make(chan struct{}, 2)
	s.udp.NotifyStartedFunc = func() { started <- struct{}{} }
	s.tcp.NotifyStartedFunc = func() { started <- struct{}{} }
	go s.udp.ActivateAndServe()
	go s.tcp.ActivateAndServe()
	<-started
	<-started
	return nil
}

// Close stops the server.
func (s *Server) Close() {
	s.udp.Shutdown()
	s.tcp.Shutdown()
}

// Set adds or replaces the record for name.
func (s *Server) Set(name string, r Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records[dns.Fqdn(strings.ToLower(name))] = r
}

// Queries returns how many queries of type qtype ("A", "AAAA") name has had.
func (s *Server) Queries(name, qtype string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries[dns.Fqdn(strings.ToLower(name))+"/"+qtype]
}

// MaxConcurrent is the most queries the server was answering at one time.
func (s *Server) MaxConcurrent() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxBusy
}

// Names returns every name the server has been asked about, lower case, fully
// qualified, once each.
func (s *Server) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	var names []string
	for k := range s.queries {
		name, _, _ := strings.Cut(k, "/")
		if !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
	}
	return names
}

func (s *Server) serve(udp bool) func(dns.ResponseWriter, *dns.Msg) {
	return func(w dns.ResponseWriter, req *dns.Msg) {
		resp := new(dns.Msg)
		resp.SetReply(req)
		if len(req.Question) != 1 {
			resp.Rcode = dns.RcodeFormatError
			w.WriteMsg(resp)
			return
		}
		q := req.Question[0]
		name := strings.ToLower(q.Name)
		qtype := dns.TypeToString[q.Qtype]
		s.mu.Lock()
		n := s.queries[name+"/"+qtype]
		s.queries[name+"/"+qtype] = n + 1
		r, ok := s.records[name]
		s.mu.Unlock()
		if !ok {
			resp.Rcode = dns.RcodeNameError
			resp.Ns = []dns.RR{soa(name)}
			w.WriteMsg(resp)
			return
		}
		s.mu.Lock()
		s.busy++
		s.maxBusy = max(s.maxBusy, s.busy)
		s.mu.Unlock()
		time.Sleep(r.Delay)
		s.mu.Lock()
		s.busy--
		s.mu.Unlock()
		if udp && r.Truncate {
			resp.Truncated = true
			w.WriteMsg(resp)
			return
		}
		addrs := r.AAAA
		if q.Qtype == dns.TypeA {
			addrs = r.A
			if len(r.Sequence) > 0 {
				addrs = r.Sequence[min(n, len(r.Sequence)-1)]
			}
		}
		for _, a := range addrs {
			rr, err := dns.NewRR(fmt.Sprintf("%s %d IN %s %s", name, r.TTL, qtype, a))
			if err == nil && (q.Qtype == dns.TypeA || q.Qtype == dns.TypeAAAA) {
				resp.Answer = append(resp.Answer, rr)
			}
		}
		if len(resp.Answer) == 0 {
			resp.Ns = []dns.RR{soa(name)} // NODATA
		}
		w.WriteMsg(resp)
	}
}

func soa(name string) dns.RR {
	rr, _ := dns.NewRR(fmt.Sprintf("%s %d IN SOA ns.test. hostmaster.test. 1 3600 600 86400 %d", name, NegativeTTL, NegativeTTL))
	return rr
}
