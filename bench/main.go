// Command bench measures egressd against no proxy at all, on loopback, in one run:
// CONNECT throughput, plain-HTTP requests per second with latency, new CONNECT
// tunnels per second, and resident memory per idle tunnel. Where they are
// installed, Squid and tinyproxy run the same workloads as peers, and HAProxy and
// nginx, as plain relays with no CONNECT and no policy, show what this machine
// allows any proxy at all.
//
// On 2 cores the load generator competes with the proxy, so each workload runs in
// interleaved rounds (proxy, direct, proxy, direct, ...) and the medians are
// reported, with the ratio of proxy to direct. Every address it touches is on
// 127.0.0.1; every loop is bounded in time and count.
//
//	go run ./bench            # all workloads, 5 rounds each
//	go run ./bench -quick     # a smoke run: small sizes, 1 round
package main

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/egressd/egressd/internal/residency"
)

func main() { os.Exit(run(os.Args[1:])) }

type settings struct {
	rounds      int
	bytes       int64
	httpClients int
	httpRate    int
	tunnelConc  int
	duration    time.Duration
	idle        int
	only        map[string]bool // workloads to run; empty: all
	baseline    string          // a git revision of egressd to run beside the working tree's
}

func (s settings) runs(name string) bool { return len(s.only) == 0 || s.only[name] }

func run(args []string) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var s settings
	fs.IntVar(&s.rounds, "rounds", 5, "interleaved rounds per workload")
	fs.Int64Var(&s.bytes, "bytes", 1<<30, "bytes moved through one tunnel")
	fs.IntVar(&s.httpClients, "http-clients", 64, "concurrent keep-alive HTTP clients")
	fs.IntVar(&s.httpRate, "http-rate", 4000, "requests a second offered to every proxy for the fixed-rate latency")
	fs.IntVar(&s.tunnelConc, "tunnel-clients", 32, "concurrent clients opening tunnels")
	fs.DurationVar(&s.duration, "duration", 3*time.Second, "length of each timed round")
	fs.IntVar(&s.idle, "idle-tunnels", 2000, "idle tunnels held open for the memory figure")
	quick := fs.Bool("quick", false, "a smoke run: 64 MiB, 1 round, 1s rounds, 200 idle tunnels")
	only := fs.String("only", "", "comma-separated workloads to run: throughput, http, tunnels, memory, mtls, transparent; empty: all")
	fs.StringVar(&s.baseline, "baseline", "", "also run egressd built from this git revision (before/after a change)")
	bare := fs.String("bare-connect", "", "run only the bare CONNECT relay on this loopback address (the bench starts it)")
	origin := fs.String("serve-origin", "", "run only the transparent workload's origin on this address (the bench starts it)")
	connLoadMode := fs.String("conn-load", "", "run only the transparent workload's load: transparent or connect, then clients and duration")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *bare != "" {
		return serveBareConnect(*bare)
	}
	if *origin != "" {
		return serveOrigin(*origin)
	}
	if *connLoadMode != "" {
		conc, _ := strconv.Atoi(fs.Arg(0))
		d, _ := time.ParseDuration(fs.Arg(1))
		return connLoad(*connLoadMode, max(conc, 1), max(d, time.Second))
	}
	if *quick {
		s = settings{rounds: 1, bytes: 64 << 20, httpClients: 16, httpRate: 1000, tunnelConc: 8, duration: time.Second, idle: 200, baseline: s.baseline}
	}
	s.only = map[string]bool{}
	for _, w := range strings.Split(*only, ",") {
		if w = strings.TrimSpace(w); w != "" {
			s.only[w] = true
		}
	}
	if err := bench(s); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	return 0
}

func bench(s settings) error {
	dir, err := os.MkdirTemp("", "egressd-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o777) // squid drops to its own user and writes its logs here

	sinks, err := startSink()
	if err != nil {
		return err
	}
	echos, err := startEcho()
	if err != nil {
		return err
	}
	webs, err := startWeb()
	if err != nil {
		return err
	}
	sink, echo, web := sinks[0], echos[0], webs[0]
	targets := slices.Concat(sinks, echos, webs) // the relays take the last originAddrs for the web server's
	var peers []*peer
	// Stopped however the run ends: a peer that fails to start must not leave the
	// ones before it running.
	defer func() {
		for _, p := range peers {
			p.stop()
		}
	}()
	e, err := startEgressd(dir, targets, "egressd", ".")
	if err != nil {
		return err
	}
	peers = append(peers, e)
	if s.baseline != "" {
		b, err := startBaseline(dir, targets, s.baseline)
		if err != nil {
			return err
		}
		peers = append(peers, b)
	}
	for _, start := range []func(string, []string) (*peer, error){startSquid, startTinyproxy, startSmokescreen, startBareConnect, startHAProxy, startNginx} {
		p, err := start(dir, targets)
		switch {
		case errors.Is(err, errNotInstalled):
			fmt.Fprintf(os.Stderr, "bench: %v; leaving it out\n", err)
		case err != nil:
			return err
		default:
			if p.relay == nil && !p.connectOnly {
				// Not the bare relay: it splices, two pipe descriptors per direction
				// of an idle tunnel, and 5 000 tunnels need more than it may open.
				p.restart = start
			}
			peers = append(peers, p)
		}
	}
	var names []string
	for _, p := range peers {
		names = append(names, p.name)
	}
	fmt.Printf("%s vs no proxy, loopback, %d cores, %d rounds (medians; ratio to direct in brackets)\n", strings.Join(names, ", "), runtime.NumCPU(), s.rounds)
	var ceilings []string
	for _, p := range peers {
		if p.relay != nil {
			ceilings = append(ceilings, p.name)
		}
		if p.connectOnly {
			fmt.Printf("%s: a bare CONNECT relay in Go, part of the bench: no net/http, no allowlist, no\n"+
				"access log; a ceiling for CONNECT proxies written in Go on this machine\n", p.name)
		}
	}
	if ceilings != nil {
		fmt.Printf("%s: plain TCP relays and reverse proxies, one port per target, with no CONNECT, no\n"+
			"allowlist and no access log: less work than any forward proxy does, so a ceiling for\n"+
			"this machine rather than peers\n", strings.Join(ceilings, ", "))
	}
	fmt.Println()
	fmt.Printf("%-40s", "workload")
	for _, n := range append(names, "direct") {
		fmt.Printf(" %18s", n)
	}
	fmt.Println()

	res := results{}
	if s.runs("memory") {
		// Measured first, on fresh processes: after the other workloads a heap has free
		// room to reuse, and the figures would flatter.
		if err := benchMemory(s, dir, targets, echo, peers, res); err != nil {
			return err
		}
	}
	columns := append(append([]*peer(nil), peers...), &peer{name: "direct"})
	if s.runs("throughput") {
		cpu := map[string][]float64{}
		interleave(s.rounds, "CONNECT throughput (MiB/s)", columns, func(p *peer) (float64, error) {
			before := p.cpuSeconds()
			mibs, err := throughput(p.dial, sink, s.bytes)
			if used := p.cpuSeconds() - before; p.cmd != nil && err == nil {
				cpu[p.name] = append(cpu[p.name], used/(float64(s.bytes)/(1<<30)))
			}
			return mibs, err
		}).print(false)
		res.add(rowCPUPerGiB, medians(columns, "  proxy CPU per GiB (s)", cpu).printPlain(2))
	}
	if s.runs("http") {
		p50 := map[string][]float64{}
		p99 := map[string][]float64{}
		cpu := map[string][]float64{}
		res.add(rowHTTPRate, interleave(s.rounds, fmt.Sprintf("HTTP requests/s (%d clients)", s.httpClients), columns, func(p *peer) (float64, error) {
			if p.connectOnly {
				return math.NaN(), nil
			}
			proxy, url := p.httpTarget(web)
			before := p.cpuSeconds()
			r, err := httpLoad(proxy, url, s.httpClients, s.duration)
			p50[p.name] = append(p50[p.name], r.p50)
			p99[p.name] = append(p99[p.name], r.p99)
			if used := p.cpuSeconds() - before; p.cmd != nil && r.rps > 0 {
				cpu[p.name] = append(cpu[p.name], used/(r.rps*s.duration.Seconds())*1e6)
			}
			return r.rps, err
		}).print(false))
		medians(columns, "  HTTP latency p50 (ms)", p50).print(true)
		res.add(rowHTTPP99, medians(columns, "  HTTP latency p99 (ms)", p99).print(true))
		res.add(rowCPUPerRequest, medians(columns, "  proxy CPU per request (us)", cpu).printPlain(1))
		// The rows above come from clients that send as fast as answers come, so a
		// faster proxy also has a busier load generator beside it on the same cores;
		// at one offered rate for all, the latencies compare the proxies alone.
		res.add(rowHTTPP99Fixed, interleave(s.rounds, fmt.Sprintf("  HTTP p99 at %d requests/s (ms)", s.httpRate), columns, func(p *peer) (float64, error) {
			if p.connectOnly {
				return math.NaN(), nil
			}
			proxy, url := p.httpTarget(web)
			return httpFixedRate(proxy, url, s.httpClients, s.httpRate, s.duration)
		}).print(true))
	}
	if s.runs("tunnels") {
		for _, w := range []struct {
			name, rate, p99, cpu string
			targets              []string
			use                  func(net.Conn, string) error
		}{
			{"one HTTP request", rowTunnelRate, rowTunnelP99, rowCPUPerTunnel, webs, oneRequest},
			{"one byte echoed", "", "", "", echos, echoOne},
		} {
			cpu := map[string][]float64{}
			p99 := map[string][]float64{}
			r := interleave(s.rounds, fmt.Sprintf("new tunnels/s, %s (%d clients)", w.name, s.tunnelConc), columns, func(p *peer) (float64, error) {
				before := p.cpuSeconds()
				rate, tail, err := tunnelRate(p.dial, w.targets, s.tunnelConc, s.duration, w.use)
				p99[p.name] = append(p99[p.name], tail)
				if used := p.cpuSeconds() - before; p.cmd != nil && rate > 0 {
					cpu[p.name] = append(cpu[p.name], used/(rate*s.duration.Seconds())*1e6)
				}
				return rate, err
			}).print(false)
			tail := medians(columns, "  new tunnel latency p99 (ms)", p99).print(true)
			c := medians(columns, "  proxy CPU per new tunnel (us)", cpu).printPlain(1)
			if w.rate != "" {
				res.add(w.rate, r)
				res.add(w.p99, tail)
				res.add(w.cpu, c)
			}
		}
	}
	if s.runs("mtls") {
		if err := benchMTLS(s, dir); err != nil {
			return fmt.Errorf("mtls: %w", err)
		}
	}
	if s.runs("transparent") {
		if err := benchTransparent(s, dir); err != nil {
			return fmt.Errorf("transparent: %w", err)
		}
	}
	res.goals(peers)
	return nil
}

// row is one workload's medians, by column; the last column is direct.
type row struct {
	name    string
	columns []string
	values  []float64
	err     error
}

// print writes the row with each proxy's ratio to direct (for latencies, direct's to
// the proxy's, so that higher is better everywhere).
func (r row) print(lowerBetter bool) row {
	fmt.Printf("%-40s", r.name)
	if r.err != nil {
		fmt.Printf(" error: %v\n", r.err)
		return r
	}
	direct := r.values[len(r.values)-1]
	for i, v := range r.values {
		if math.IsNaN(v) {
			fmt.Printf(" %18s", "-")
			continue
		}
		if i == len(r.values)-1 {
			fmt.Printf(" %18.1f", v)
			continue
		}
		ratio := v / direct
		if lowerBetter {
			ratio = direct / v
		}
		fmt.Printf(" %18s", fmt.Sprintf("%.1f (%.2f)", v, ratio))
	}
	fmt.Println()
	return r
}

// printPlain writes the row's values, with prec decimals, and no ratio: a cost the
// direct column does not have.
func (r row) printPlain(prec int) row {
	fmt.Printf("%-40s", r.name)
	for _, v := range r.values {
		if math.IsNaN(v) {
			fmt.Printf(" %18s", "-")
			continue
		}
		fmt.Printf(" %18.*f", prec, v)
	}
	fmt.Println()
	return r
}

// interleave runs f for every column, round by round (egressd, squid, ..., direct,
// egressd, ...), and returns the medians.
func interleave(rounds int, name string, columns []*peer, f func(*peer) (float64, error)) row {
	got := map[string][]float64{}
	for i := 0; i < rounds; i++ {
		for _, p := range columns {
			v, err := f(p)
			if err != nil {
				return row{name: name, err: fmt.Errorf("%s: %w", p.name, err)}
			}
			got[p.name] = append(got[p.name], v)
		}
	}
	return medians(columns, name, got)
}

func medians(columns []*peer, name string, got map[string][]float64) row {
	r := row{name: name}
	for _, p := range columns {
		r.columns = append(r.columns, p.name)
		r.values = append(r.values, median(got[p.name]))
	}
	return r
}

// median is NaN, printed "-", for a column that did not run the workload.
func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// httpTarget is the proxy (or "" for none) and the URL through which p reaches the
// web server at web.
func (p *peer) httpTarget(web string) (proxy, url string) {
	if p.relay != nil {
		return "", "http://" + p.relay[web] + "/"
	}
	return p.addr, "http://" + web + "/"
}

// dial opens a connection to target through p: a CONNECT tunnel, the relay's port
// for target, or for the direct column a direct connection.
func (p *peer) dial(target string) (net.Conn, error) {
	if p.relay != nil {
		return net.DialTimeout("tcp", p.relay[target], 5*time.Second)
	}
	return connect(p.addr, target)
}

// connect opens a tunnel to target through proxy, or with proxy "" a direct connection.
func connect(proxy, target string) (net.Conn, error) {
	if proxy == "" {
		return net.DialTimeout("tcp", target, 5*time.Second)
	}
	c, err := net.DialTimeout("tcp", proxy, 5*time.Second)
	if err != nil {
		return nil, err
	}
	if _, err := io.WriteString(c, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n"); err != nil {
		c.Close()
		return nil, err
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReaderSize(c, 512)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != http.StatusOK {
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: %v %v", target, resp, err)
	}
	c.SetReadDeadline(time.Time{})
	if br.Buffered() > 0 {
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: the proxy sent bytes after its answer", target)
	}
	return c, nil
}

// throughput sends n bytes to the sink, announced by an 8-byte length, and waits
// for its count; it returns MiB/s. It does not half-close: Squid ends a tunnel on
// the client's half-close, which would make the figure a failure instead.
func throughput(dial func(string) (net.Conn, error), sink string, n int64) (float64, error) {
	c, err := dial(sink)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	start := time.Now()
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(n))
	if _, err := c.Write(hdr[:]); err != nil {
		return 0, err
	}
	buf := make([]byte, 1<<20)
	for sent := int64(0); sent < n; {
		w, err := c.Write(buf[:min(int64(len(buf)), n-sent)])
		if err != nil {
			return 0, err
		}
		sent += int64(w)
	}
	var got [8]byte
	if _, err := io.ReadFull(c, got[:]); err != nil {
		return 0, fmt.Errorf("reading the sink's count: %w", err)
	}
	if m := int64(binary.BigEndian.Uint64(got[:])); m != n {
		return 0, fmt.Errorf("sink received %d bytes; sent %d", m, n)
	}
	return float64(n) / (1 << 20) / time.Since(start).Seconds(), nil
}

type httpResult struct{ rps, p50, p99 float64 }

// httpLoad runs clients keep-alive clients asking for target through proxy ("" for
// none) for d, and returns requests per second and latency percentiles in
// milliseconds.
func httpLoad(proxy, target string, clients int, d time.Duration) (httpResult, error) {
	return httpLoadTLS(proxy, target, clients, d, nil)
}

// httpFixedRate sends rate requests a second for d through proxy ("" for none), from
// up to clients keep-alive connections, and returns the 99th percentile latency in
// milliseconds, counted from when each request was due, so that time spent queued
// behind a slow answer counts too. A proxy that cannot keep up shows it as latency.
func httpFixedRate(proxy, target string, clients, rate int, d time.Duration) (float64, error) {
	client, done := benchClient(proxy, clients, nil)
	defer done()
	n := int(float64(rate) * d.Seconds())
	due := make(chan time.Time, n)
	start := time.Now().Add(10 * time.Millisecond)
	interval := time.Second / time.Duration(rate)
	for i := range n {
		due <- start.Add(time.Duration(i) * interval)
	}
	close(due)
	lats, err := gets(client, target, clients, func() (time.Time, bool) {
		at, ok := <-due
		time.Sleep(time.Until(at))
		return at, ok
	})
	if err != nil {
		return 0, err
	}
	return lats[len(lats)*99/100], nil
}

// httpLoadTLS is httpLoad with the client's own TLS configuration for https targets.
func httpLoadTLS(proxy, target string, clients int, d time.Duration, tlsConfig *tls.Config) (httpResult, error) {
	client, done := benchClient(proxy, clients, tlsConfig)
	defer done()
	deadline := time.Now().Add(d)
	start := time.Now()
	lats, err := gets(client, target, clients, func() (time.Time, bool) {
		now := time.Now()
		return now, now.Before(deadline)
	})
	if err != nil {
		return httpResult{}, err
	}
	return httpResult{
		rps: float64(len(lats)) / time.Since(start).Seconds(),
		p50: lats[len(lats)/2],
		p99: lats[len(lats)*99/100],
	}, nil
}

// benchClient is an HTTP client with up to clients keep-alive connections, through
// proxy ("" for none); done closes them.
func benchClient(proxy string, clients int, tlsConfig *tls.Config) (client *http.Client, done func()) {
	tr := &http.Transport{MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients, DisableCompression: true, TLSClientConfig: tlsConfig}
	if proxy != "" {
		u, _ := url.Parse("http://" + proxy)
		tr.Proxy = http.ProxyURL(u)
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, tr.CloseIdleConnections
}

// gets runs clients goroutines that ask for target while next says so, each request
// timed from the time next gives, and returns the latencies of the 200s in
// milliseconds, sorted.
func gets(client *http.Client, target string, clients int, next func() (time.Time, bool)) ([]float64, error) {
	var (
		mu   sync.Mutex
		lats []float64
		errs atomic.Int64
		wg   sync.WaitGroup
	)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []float64
			for from, ok := next(); ok; from, ok = next() {
				if !getOK(client, target) {
					errs.Add(1)
					continue
				}
				mine = append(mine, float64(time.Since(from).Microseconds())/1000)
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(lats) == 0 {
		return nil, fmt.Errorf("no request succeeded (%d errors)", errs.Load())
	}
	slices.Sort(lats)
	return lats, nil
}

// getOK asks for target and reads the answer; it reports whether that was a 200 (a
// proxy's 502 is no answer from the origin).
func getOK(client *http.Client, target string) bool {
	resp, err := client.Get(target)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// tunnelRate opens tunnels from conc clients for d, to the targets in turn, uses
// each once with use and closes it; it returns tunnels per second and the 99th
// percentile, in milliseconds, of the time from dialling to the end of use.
//
// The targets are one server on several loopback addresses: a proxy that closes its
// upstream connection first keeps it in TIME_WAIT for a minute, and tens of
// thousands of connections a round to one address would leave too few free ports
// towards it, so that every connect() would pay the kernel's search for one.
func tunnelRate(dial func(string) (net.Conn, error), targets []string, conc int, d time.Duration, use func(net.Conn, string) error) (rate, p99 float64, err error) {
	deadline := time.Now().Add(d)
	var (
		mu      sync.Mutex
		lats    []float64
		wg      sync.WaitGroup
		next    atomic.Int64
		lastErr atomic.Value
	)
	start := time.Now()
	for i := 0; i < conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []float64
			for time.Now().Before(deadline) {
				target := targets[next.Add(1)%int64(len(targets))]
				t0 := time.Now()
				c, err := dial(target)
				if err != nil {
					lastErr.Store(err)
					continue
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if err := use(c, target); err != nil {
					lastErr.Store(err)
				} else {
					mine = append(mine, float64(time.Since(t0).Microseconds())/1000)
				}
				c.Close()
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(lats) == 0 {
		return 0, 0, fmt.Errorf("no tunnel succeeded: %v", lastErr.Load())
	}
	slices.Sort(lats)
	return float64(len(lats)) / time.Since(start).Seconds(), lats[len(lats)*99/100], nil
}

// echoOne sends one byte to an echo server and reads it back.
func echoOne(c net.Conn, _ string) error {
	one := []byte{'x'}
	if _, err := c.Write(one); err != nil {
		return err
	}
	_, err := io.ReadFull(c, one)
	return err
}

// oneRequest sends one GET to the web server at target and reads its answer, as a
// function's short HTTPS call does inside its tunnel.
func oneRequest(c net.Conn, target string) error {
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+target+"\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(c, 1024), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// idleMemory opens n tunnels through p, after a few it opens and closes first,
// leaves them idle, and returns p's resident memory growth per tunnel in bytes.
func idleMemory(p *peer, echo string, n int) (float64, error) {
	// A few tunnels first, so that the figure is what each more costs, not the
	// first one's touching the code it runs.
	warm, err := openTunnels(p, echo, 50, 1)
	warm()
	if err != nil {
		return 0, fmt.Errorf("warming up: %w", err)
	}
	time.Sleep(100 * time.Millisecond)
	before, err := residency.Resident(p.cmd.Process.Pid)
	if err != nil {
		return 0, err
	}
	closeAll, err := openTunnels(p, echo, n, 1)
	defer closeAll()
	if err != nil {
		return 0, err
	}
	time.Sleep(2 * time.Second) // let the runtime settle: stacks shrink at GC
	after, err := residency.Resident(p.cmd.Process.Pid)
	if err != nil {
		return 0, err
	}
	return float64(after-before) / float64(n), nil
}

// openTunnels opens n tunnels through p, workers at a time, each used once (a byte
// each way), and returns a function that closes them all, which the caller calls
// whether or not an error came.
func openTunnels(p *peer, echo string, n, workers int) (closeAll func(), err error) {
	conns := make([]net.Conn, n)
	closeAll = func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		mu      sync.Mutex
		lastErr error
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				c, err := p.dial(echo)
				if err == nil {
					conns[i] = c
					c.SetDeadline(time.Now().Add(10 * time.Second))
					err = echoOne(c, echo)
				}
				if err != nil {
					mu.Lock()
					lastErr = fmt.Errorf("tunnel %d: %w", i, err)
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return closeAll, lastErr
}

// cpuSeconds is the user and system CPU time of p's process and all its
// descendants (Squid works in a child), from /proc; 0 for the direct column.
func (p *peer) cpuSeconds() float64 {
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	entries, _ := os.ReadDir("/proc")
	parent := map[int]int{}
	ticks := map[int]float64{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The fields after the command name, which is in parentheses.
		f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
		if len(f) < 13 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		utime, _ := strconv.ParseFloat(f[11], 64)
		stime, _ := strconv.ParseFloat(f[12], 64)
		parent[pid], ticks[pid] = ppid, utime+stime
	}
	total := 0.0
	for pid, t := range ticks {
		for a := pid; a > 1; a = parent[a] {
			if a == p.cmd.Process.Pid {
				total += t
				break
			}
		}
	}
	return total / 100 // USER_HZ
}

// originAddrs is how many loopback addresses each origin listens on (see tunnelRate).
const originAddrs = 8

// startSink serves connections that read an 8-byte length, then that many bytes,
// and answer the count.
func startSink() ([]string, error) {
	return serveTCP(func(c net.Conn) {
		var hdr [8]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		n, _ := io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint64(hdr[:])))
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(n))
		c.Write(b[:])
	})
}

// startEcho serves connections that echo what they read, with read and write: a
// TCP-to-TCP io.Copy would splice through a pipe, two more descriptors held per idle
// connection, and the burst of tunnels would run the bench out of them.
func startEcho() ([]string, error) {
	return serveTCP(func(c net.Conn) {
		buf := make([]byte, 512)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
}

func serveTCP(handle func(net.Conn)) ([]string, error) {
	lns, err := listenLoopback()
	if err != nil {
		return nil, err
	}
	var addrs []string
	for _, ln := range lns {
		addrs = append(addrs, ln.Addr().String())
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
	}
	return addrs, nil
}

// listenLoopback listens on one port of 127.0.0.1 to 127.0.0.originAddrs, trying
// a few ports until one is free on every address.
func listenLoopback() ([]net.Listener, error) {
	var lastErr error
	for range 20 {
		first, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		_, port, _ := net.SplitHostPort(first.Addr().String())
		lns := []net.Listener{first}
		for i := 2; i <= originAddrs && err == nil; i++ {
			var ln net.Listener
			if ln, err = net.Listen("tcp", fmt.Sprintf("127.0.0.%d:%s", i, port)); err == nil {
				lns = append(lns, ln)
			}
		}
		if err == nil {
			return lns, nil
		}
		lastErr = err
		for _, ln := range lns {
			ln.Close()
		}
	}
	return nil, lastErr
}

// startWeb serves a small HTTP answer.
func startWeb() ([]string, error) {
	lns, err := listenLoopback()
	if err != nil {
		return nil, err
	}
	body := []byte(strings.Repeat("x", 128))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	})}
	var addrs []string
	for _, ln := range lns {
		addrs = append(addrs, ln.Addr().String())
		go srv.Serve(ln)
	}
	return addrs, nil
}

// peer is a proxy under test: its name, its address, and its process. The direct
// column is a peer with no address.
type peer struct {
	name string
	addr string
	cmd  *exec.Cmd
	// relay, for a TCP relay with no CONNECT, maps each target to the relay's port
	// for it.
	relay map[string]string
	// connectOnly is set for a proxy that only tunnels: it skips the HTTP workload.
	connectOnly bool
	// restart starts a fresh process of the same proxy with its files in dir, for
	// the burst memory figure; nil for the ceilings, which are not measured there.
	restart func(dir string, targets []string) (*peer, error)
}

var errNotInstalled = errors.New("not installed")

// startBaseline checks out rev of this repository in a temporary work tree, and
// starts egressd built from it.
func startBaseline(dir string, targets []string, rev string) (*peer, error) {
	tree := filepath.Join(dir, "baseline")
	add := exec.Command("git", "worktree", "add", "--detach", tree, rev)
	add.Stderr = os.Stderr
	if err := add.Run(); err != nil {
		return nil, fmt.Errorf("checking out %s: %w", rev, err)
	}
	defer exec.Command("git", "worktree", "remove", "--force", tree).Run()
	return startEgressd(dir, targets, "egressd@"+rev, tree)
}

// startEgressd builds egressd from the source tree src and starts it with an
// allowlist of the given targets.
func startEgressd(dir string, targets []string, name, src string) (*peer, error) {
	bin := filepath.Join(dir, name)
	// As scripts/build.sh builds the release: static, no symbol tables.
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./cmd/egressd")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Dir = src
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return nil, fmt.Errorf("building egressd (run from the repository root): %w", err)
	}
	start := func(dir string, targets []string) (*peer, error) {
		if err := writeEgressdConfig(dir, targets); err != nil {
			return nil, err
		}
		return startEgressdWith(dir, bin, name)
	}
	p, err := start(dir, targets)
	if p != nil {
		p.restart = start
	}
	return p, err
}

// writeEgressdConfig writes dir/egressd.yaml with an allowlist of targets.
func writeEgressdConfig(dir string, targets []string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "allow.txt"), []byte(strings.Join(targets, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	// Every target is an IP literal, so nothing is resolved; the upstream is a dead
	// loopback port all the same, so that a bug could not send a query off the machine.
	cfg := "proxy:\n  listen: 127.0.0.1:0\n  max_connections: 16384\nmetrics:\n  listen: 127.0.0.1:0\n" +
		"dns:\n  upstreams: [127.0.0.1:1]\nallowlist: [allow.txt]\n"
	return os.WriteFile(filepath.Join(dir, "egressd.yaml"), []byte(cfg), 0o644)
}

// startEgressdWith starts bin on dir's egressd.yaml and waits until it serves.
func startEgressdWith(dir, bin, name string) (*peer, error) {
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "serve", "--config", filepath.Join(dir, "egressd.yaml"))
	cmd.SysProcAttr = ownGroup()
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	e := &peer{name: name, cmd: cmd}
	for i := 0; i < 500; i++ {
		data, _ := os.ReadFile(logf.Name())
		for _, line := range strings.Split(string(data), "\n") {
			if strings.Contains(line, `"msg":"egressd started"`) {
				var v struct{ Proxy string }
				json.Unmarshal([]byte(line), &v)
				e.addr = v.Proxy
				return e, nil
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.stop()
	return nil, errors.New("egressd did not start within 5s")
}

func (p *peer) stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	// The whole process group: Squid's worker is a child of its own, and a peer left
	// running would take CPU from the next run's figures.
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
}

// ownGroup starts a peer in a process group of its own, which stop ends.
func ownGroup() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
