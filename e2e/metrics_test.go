package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestMetricsAndHealth(t *testing.T) {
	t.Parallel()
	origin := httpOrigin(t)
	echo := echoOrigin(t)
	d := startDaemon(t, daemonConfig{files: map[string]string{
		"allow.d/a.txt": origin.Listener.Addr().String() + "\n" + echo + "\n",
	}})
	target := "http://" + origin.Listener.Addr().String() + "/"
	for i := 0; i < 3; i++ {
		if got := d.status(target); got != 200 {
			t.Fatalf("allowed request %d = %d", i, got)
		}
	}
	if got := d.status("http://denied.invalid/"); got != 403 {
		t.Fatalf("denied request = %d", got)
	}
	c := openTunnel(t, d.proxy, echo)
	if err := roundTrip(c, "0123456789"); err != nil {
		t.Fatal(err)
	}
	if v := d.metric("egressd_tunnels_active"); v != 1 {
		t.Errorf("egressd_tunnels_active with one tunnel open = %v; want 1", v)
	}
	c.Close()
	d.waitLog(`"closed":"done"`, 5*time.Second)

	text := d.scrape()
	want := map[string]float64{
		`egressd_requests_total{decision="allow",kind="http"}`:    3,
		`egressd_requests_total{decision="deny",kind="http"}`:     1,
		`egressd_requests_total{decision="allow",kind="connect"}`: 1,
		`egressd_tunnels_active`:                                  0,
		`egressd_tunnel_bytes_total{direction="upstream"}`:        10,
		`egressd_tunnel_bytes_total{direction="downstream"}`:      10,
		`egressd_policy_rules`:                                    2,
		`egressd_policy_reloads_total{result="success"}`:          1,
		`egressd_policy_last_reload_success`:                      1,
		`egressd_request_duration_seconds_count{kind="http"}`:     4,
	}
	for series, v := range want {
		if got := d.metric(series); got != v {
			t.Errorf("%s = %v; want %v", series, got, v)
		}
	}
	for _, name := range []string{"egressd_policy_last_reload_timestamp_seconds", "egressd_upstream_errors_total", "go_goroutines", "process_resident_memory_bytes",
		"egressd_dns_queries_total", "egressd_dns_query_duration_seconds", "egressd_dns_cache_hits_total", "egressd_dns_cache_entries"} {
		if !strings.Contains(text, "\n"+name) {
			t.Errorf("metric %s missing", name)
		}
	}
	for _, bad := range []string{"denied.invalid", "127.0.0.1"} {
		if strings.Contains(text, bad) {
			t.Errorf("metrics contain %q: labels must not hold hosts or addresses", bad)
		}
	}
	promtoolCheck(t, text)

	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200} {
		resp, err := http.Get("http://" + d.metrics + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s = %d; want %d", path, resp.StatusCode, want)
		}
	}
}

// TestRuntimeSettings checks, through the Go runtime's own gauges, that a running
// egressd takes GOMAXPROCS from the processors key and GOGC from gc_percent, else
// from the environment, else 1 and 200.
func TestRuntimeSettings(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, extra string
		env         []string
		procs, gogc float64
	}{
		{"defaults", "", []string{"GOMAXPROCS=", "GOGC="}, 1, 400},
		{"environment", "", []string{"GOMAXPROCS=3", "GOGC=150"}, 3, 150},
		{"keys over environment", "processors: 2\ngc_percent: 300\n", []string{"GOMAXPROCS=3", "GOGC=150"}, 2, 300},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := startDaemon(t, daemonConfig{extra: tc.extra, env: tc.env})
			if got := d.metric("go_sched_gomaxprocs_threads"); got != tc.procs {
				t.Errorf("go_sched_gomaxprocs_threads = %v; want %v", got, tc.procs)
			}
			if got := d.metric("go_gc_gogc_percent"); got != tc.gogc {
				t.Errorf("go_gc_gogc_percent = %v; want %v", got, tc.gogc)
			}
		})
	}
}

// promtoolCheck runs `promtool check metrics` on an exposition.
func promtoolCheck(t *testing.T, text string) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is not installed: apt-get install prometheus (.ci/run does)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out.String())
	}
}

func TestReportMode(t *testing.T) {
	t.Parallel()
	origin := httpOrigin(t)
	target := "http://" + origin.Listener.Addr().String() + "/"
	t.Run("allowlist denials are let through", func(t *testing.T) {
		d := startDaemon(t, daemonConfig{
			extra: "mode: report\n",
			dns:   "  allow_private: [127.0.0.0/8]\n",
			files: map[string]string{"allow.d/a.txt": "other.invalid\n"},
		})
		if got := d.status(target); got != 200 {
			t.Errorf("report mode: unlisted target = %d; want 200 (let through)", got)
		}
		line := d.waitLog(`"decision":"report"`, 2*time.Second)
		if !strings.Contains(line, `"reason":"ip address not on the allowlist"`) {
			t.Errorf("report line lacks the reason: %s", line)
		}
		if v := d.metric(`egressd_requests_total{decision="report",kind="http"}`); v != 1 {
			t.Errorf("report count = %v; want 1", v)
		}
	})
	t.Run("the guard still refuses", func(t *testing.T) {
		d := startDaemon(t, daemonConfig{extra: "mode: report\n", files: map[string]string{"allow.d/a.txt": "other.invalid\n"}})
		out, _ := curl(t, nil, "-x", d.proxyURL(), "-i", target)
		if !strings.Contains(out, "403 Forbidden") || !strings.Contains(out, "X-Egressd-Denied: private address") {
			t.Errorf("report mode, loopback target:\n%s\nwant 403 private address", out)
		}
		if v := d.metric(`egressd_requests_total{decision="deny",kind="http"}`); v != 1 {
			t.Errorf("deny count = %v; want 1", v)
		}
	})
}

func TestConnectionLimit(t *testing.T) {
	t.Parallel()
	echo := echoOrigin(t)
	origin := httpOrigin(t)
	d := startDaemon(t, daemonConfig{
		proxy: "  max_connections: 1\n",
		files: map[string]string{"allow.d/a.txt": echo + "\n" + origin.Listener.Addr().String() + "\n"},
	})
	c := openTunnel(t, d.proxy, echo)
	defer c.Close()
	resp, err := d.client().Get("http://" + origin.Listener.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Errorf("second connection = %d %q; want 503", resp.StatusCode, body)
	}
	if got, _ := openTunnelErr(d.proxy, echo); !strings.HasPrefix(got, "HTTP/1.1 503") {
		t.Errorf("CONNECT over the limit = %q; want 503", got)
	}
	c.Close()
	// The slot comes back when the tunnel ends.
	d.waitLog(`"closed":"done"`, 5*time.Second)
	if got := d.status("http://" + origin.Listener.Addr().String() + "/"); got != 200 {
		t.Errorf("after the tunnel closed = %d; want 200", got)
	}
}

// TestFileLimitKeepsHealthz: with ulimit -n 256 and 400 client connections open,
// each with a request begun, /healthz and /metrics still answer, and so does a
// request once connections close.
func TestFileLimitKeepsHealthz(t *testing.T) {
	t.Parallel()
	origin := httpOrigin(t)
	d := startDaemon(t, daemonConfig{fileLimit: 256, files: map[string]string{"allow.d/a.txt": origin.Listener.Addr().String() + "\n"}})
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 400; i++ {
		c, err := dialTimeout(d.proxy)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		// The start of a request and no more: a connection that sends nothing is not
		// handed to egressd by the kernel for its first seconds (TCP_DEFER_ACCEPT)
		// and holds no descriptor of its meanwhile; one that has begun a request
		// does, until proxy.read_header_timeout.
		if _, err := io.WriteString(c, "CONNECT "); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	c := &http.Client{Timeout: 3 * time.Second}
	for _, path := range []string{"/healthz", "/metrics"} {
		resp, err := c.Get("http://" + d.metrics + path)
		if err != nil {
			t.Fatalf("%s with 400 connections open: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: %d", path, resp.StatusCode)
		}
	}
	d.waitLog("proxy at its file-descriptor budget", 5*time.Second)
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	d.waitStatus("http://"+origin.Listener.Addr().String()+"/", 200)
}

// TestBurstOfTunnelsLeavesNoRuntimeRecords: the Go runtime keeps a record of about
// 550 bytes for every descriptor it ever watched at once, for good (its "other"
// memory). Tunnels that a poller moves leave its watch once set up, so 1 500
// tunnels open together cost no more of it than a few dozen set up at a time.
func TestBurstOfTunnelsLeavesNoRuntimeRecords(t *testing.T) {
	t.Parallel()
	const n = 1500
	echo := echoOrigin(t)
	d := startDaemon(t, daemonConfig{files: map[string]string{"allow.d/a.txt": echo + "\n"}})
	warm := openTunnel(t, d.proxy, echo)
	if err := roundTrip(warm, "warm"); err != nil {
		t.Fatal(err)
	}
	warm.Close()
	before := d.metric("go_memstats_other_sys_bytes")
	openTunnels(t, d, echo, n)
	if v := d.metric("egressd_tunnels_active"); v != n {
		t.Fatalf("egressd_tunnels_active = %v; want %d", v, n)
	}
	grown := d.metric("go_memstats_other_sys_bytes") - before
	t.Logf("the runtime's other memory grew by %.0f KiB for %d tunnels open at once", grown/1024, n)
	// Watched by the runtime, the 3 000 descriptors would add about 1.6 MB.
	if grown > 256<<10 {
		t.Errorf("the runtime's other memory grew by %.0f KiB for %d open tunnels; want under 256 KiB", grown/1024, n)
	}
}

// TestBulkTunnelsAtTheFileLimit: with ulimit -n 256, tunnels up to the
// file-descriptor budget all turn to bulk transfers at once. Each leaves the poller
// for copiers, which need descriptors of their own for a moment; none may lose a
// byte for it.
func TestBulkTunnelsAtTheFileLimit(t *testing.T) {
	t.Parallel()
	const tunnels, size = 90, 256 << 10
	origin := lineOrigin(t, func(c net.Conn, line string) {
		if line == "bulk\n" {
			c.Write(bytes.Repeat([]byte{'b'}, size))
			return
		}
		io.WriteString(c, line)
	})
	d := startDaemon(t, daemonConfig{fileLimit: 256, files: map[string]string{"allow.d/a.txt": origin + "\n"}})
	conns := openTunnels(t, d, origin, tunnels)
	errs := make(chan error, tunnels)
	for i, c := range conns {
		go func() {
			c.SetDeadline(time.Now().Add(20 * time.Second))
			if _, err := io.WriteString(c, "bulk\n"); err != nil {
				errs <- fmt.Errorf("tunnel %d: %w", i, err)
				return
			}
			n, err := io.CopyN(io.Discard, c, size)
			if err != nil {
				err = fmt.Errorf("tunnel %d: %d of %d bytes: %w", i, n, size, err)
			}
			errs <- err
		}()
	}
	for range tunnels {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	for i, c := range conns {
		if err := roundTrip(c, "after\n"); err != nil {
			t.Errorf("tunnel %d after its bulk transfer: %v", i, err)
		}
	}
}

// openTunnels opens n tunnels through d to target, an origin that echoes lines, each
// carrying one line there and back; they are closed when the test ends.
func openTunnels(t *testing.T, d *daemon, target string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := range n {
		c := openTunnel(t, d.proxy, target)
		conns = append(conns, c)
		if err := roundTrip(c, fmt.Sprintf("hello %d\n", i)); err != nil {
			t.Fatalf("tunnel %d: %v", i, err)
		}
	}
	return conns
}

// lineOrigin starts a raw TCP origin on 127.0.0.1 that calls answer with each line
// a connection sends, and returns its address.
func lineOrigin(t *testing.T, answer func(c net.Conn, line string)) string {
	t.Helper()
	return tcpOrigin(t, "127.0.0.1:0", func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			answer(c, line)
		}
	})
}
