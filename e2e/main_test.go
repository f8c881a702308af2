// Package e2e holds egressd's black-box tests: they build the binary once, start it
// on loopback ports with temporary configs, and drive it with real clients (curl,
// raw sockets, Go's HTTP client). Every address they reach is on 127.0.0.0/8; names
// that must never resolve use the reserved .invalid domain.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/dnstest"
)

// binary is the egressd built for this test run.
var binary string

func TestMain(m *testing.M) {
	if helper := os.Getenv("EGRESSD_E2E_HELPER"); helper != "" {
		os.Exit(runHelper(helper, os.Args[1:])) // a process a test runs inside a namespace
	}
	dir, err := os.MkdirTemp("", "egressd-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Chmod(dir, 0o755) // the binary runs as other users too (interception tests)
	binary = filepath.Join(dir, "egressd")
	build := exec.Command("go", "build", "-race", "-o", binary, "../cmd/egressd")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building egressd:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// egressd runs the binary with args and returns its stdout, stderr and exit code.
func egressd(t *testing.T, dir string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return egressdEnv(t, dir, nil, args...)
}

// egressdEnv is egressd with more environment variables.
func egressdEnv(t *testing.T, dir string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	r := execInEnv(t, dir, env, nil, args...)
	return r.stdout, r.stderr, r.code
}

// execInEnv runs egressd with more environment variables and a standard input.
func execInEnv(t *testing.T, dir string, env []string, stdin io.Reader, args ...string) execResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Dir = dir
	cmd.Stdin = stdin
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return execResult{out.String(), errb.String(), ee.ExitCode()}
	} else if err != nil {
		t.Fatalf("running egressd %v: %v", args, err)
	}
	return execResult{out.String(), errb.String(), 0}
}

// daemon is a running `egressd serve`.
type daemon struct {
	t       *testing.T
	cmd     *exec.Cmd
	dir     string // the config's directory
	proxy   string // host:port of the proxy listener
	metrics string // host:port of the metrics listener
	admin   string // host:port of the admin listener, if it runs
	logs    *logBuffer
	done    chan struct{} // closed when the process has exited
	exitErr error
}

type daemonConfig struct {
	files map[string]string // paths relative to the config dir -> content
	extra string            // more top-level YAML
	proxy string            // YAML lines under "proxy:", already indented
	dns   string            // YAML lines under "dns:", already indented
	// allowlist overrides the allowlist paths; the default is [allow.d].
	allowlist []string
	// zone is what the daemon's own fixture DNS server answers. Every daemon gets
	// one, with a hosts file that knows only localhost, so no test ever asks the
	// machine's nameservers.
	zone map[string]dnstest.Record
	// fileLimit, if set, is the daemon's file-descriptor limit (ulimit -n).
	fileLimit int
	// dnsServer, if set, is the fixture DNS server to use instead of one for zone,
	// so that a test can ask it what it was asked.
	dnsServer *dnstest.Server
	// env adds environment variables to the daemon's.
	env []string
}

// writeConfig writes cfg into a new temporary directory as egressd.yaml, with the
// allowlist files, a hosts file, a resolv.conf and a fixture DNS server of its own,
// and returns the directory.
func writeConfig(t *testing.T, cfg daemonConfig) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "allow.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range cfg.files {
		writeFile(t, filepath.Join(dir, name), content)
	}
	paths := cfg.allowlist
	if paths == nil {
		paths = []string{"allow.d"}
	}
	dnsSrv := cfg.dnsServer
	if dnsSrv == nil {
		dnsSrv = dnstest.Start(t, cfg.zone)
	}
	writeFile(t, filepath.Join(dir, "hosts"), "127.0.0.1 localhost\n")
	writeFile(t, filepath.Join(dir, "resolv.conf"), "nameserver 127.0.0.1\n")
	yaml := fmt.Sprintf("proxy:\n  listen: 127.0.0.1:0\n%smetrics:\n  listen: 127.0.0.1:0\n"+
		"dns:\n  upstreams: [%s]\n  hosts_file: hosts\n  resolv_conf: resolv.conf\n%s"+
		"allowlist: [%s]\nlog:\n  level: debug\n%s",
		cfg.proxy, dnsSrv.Addr, cfg.dns, strings.Join(paths, ", "), cfg.extra)
	writeFile(t, filepath.Join(dir, "egressd.yaml"), yaml)
	return dir
}

// startDaemon writes cfg (writeConfig), starts egressd on it, and waits until it
// logs that it is serving.
func startDaemon(t *testing.T, cfg daemonConfig) *daemon {
	t.Helper()
	dir := writeConfig(t, cfg)
	d := &daemon{t: t, dir: dir, logs: &logBuffer{}, done: make(chan struct{})}
	d.cmd = exec.Command(binary, "serve", "--config", filepath.Join(dir, "egressd.yaml"))
	if cfg.fileLimit > 0 {
		d.cmd = exec.Command("sh", "-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, cfg.fileLimit),
			binary, "serve", "--config", filepath.Join(dir, "egressd.yaml"))
	}
	d.cmd.Env = append(os.Environ(), "HTTP_PROXY=http://127.0.0.1:1", "HTTPS_PROXY=http://127.0.0.1:1", "http_proxy=http://127.0.0.1:1")
	d.cmd.Env = append(d.cmd.Env, cfg.env...)
	d.cmd.Stderr = d.logs
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.exitErr = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(10 * time.Second):
			d.cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("egressd log:\n%s", d.logs.String())
		}
	})
	started := d.waitLog(`"msg":"egressd started"`, 15*time.Second)
	var line struct{ Proxy, Metrics, Admin string }
	if err := json.Unmarshal([]byte(started), &line); err != nil {
		t.Fatalf("parsing %q: %v", started, err)
	}
	d.proxy, d.metrics, d.admin = line.Proxy, line.Metrics, line.Admin
	return d
}

// waitLog waits for a log line containing substr and returns it.
func (d *daemon) waitLog(substr string, timeout time.Duration) string {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if line := d.logs.find(substr); line != "" {
			return line
		}
		select {
		case <-d.done:
			d.t.Fatalf("egressd exited (%v) before logging %s; log:\n%s", d.exitErr, substr, d.logs.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	d.t.Fatalf("egressd did not log %s within %v; log:\n%s", substr, timeout, d.logs.String())
	return ""
}

func (d *daemon) path(name string) string { return filepath.Join(d.dir, name) }

func (d *daemon) proxyURL() string { return "http://" + d.proxy }

// client returns an HTTP client that sends everything through the daemon.
func (d *daemon) client() *http.Client {
	u, _ := url.Parse(d.proxyURL())
	return &http.Client{
		Transport: &http.Transport{Proxy: http.ProxyURL(u), DisableKeepAlives: true},
		Timeout:   5 * time.Second,
	}
}

// status returns the status code of GET target through the proxy, or 0 on a transport error.
func (d *daemon) status(target string) int {
	resp, err := d.client().Get(target)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// waitStatus polls GET target through the proxy until it answers want, and returns
// how long that took. It gives up after 5 s.
func (d *daemon) waitStatus(target string, want int) time.Duration {
	d.t.Helper()
	start := time.Now()
	for i := 0; i < 500; i++ {
		if d.status(target) == want {
			return time.Since(start)
		}
		time.Sleep(10 * time.Millisecond)
	}
	d.t.Fatalf("GET %s through the proxy never answered %d within 5s", target, want)
	return 0
}

// scrape returns the daemon's /metrics text.
func (d *daemon) scrape() string {
	d.t.Helper()
	resp, err := http.Get("http://" + d.metrics + "/metrics")
	if err != nil {
		d.t.Fatalf("scraping metrics: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// metric returns the value of the sample line starting with series, or -1.
func (d *daemon) metric(series string) float64 {
	for _, line := range strings.Split(d.scrape(), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			var v float64
			fmt.Sscan(rest, &v)
			return v
		}
	}
	return -1
}

// logBuffer collects the daemon's stderr; it is written and read concurrently.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) find(substr string) string {
	sc := bufio.NewScanner(strings.NewReader(l.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), substr) {
			return sc.Text()
		}
	}
	return ""
}

func (l *logBuffer) count(substr string) int {
	return strings.Count(l.String(), substr)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// curl runs the real curl with args and returns stdout and its exit code. env adds
// environment variables; the proxy variables of the test's own environment are
// removed so that only what a test sets is used.
func curl(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	path, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("curl is not installed: the e2e tests drive egressd with the real curl (apt-get install curl)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, append([]string{"-sS", "--max-time", "10"}, args...)...)
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); !strings.EqualFold(k, "http_proxy") && !strings.EqualFold(k, "https_proxy") &&
			!strings.EqualFold(k, "all_proxy") && !strings.EqualFold(k, "no_proxy") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("curl: %v", err)
	}
	if code != 0 {
		t.Logf("curl %v: exit %d: %s", args, code, strings.TrimSpace(errb.String()))
	}
	return out.String(), code
}

// port returns the port of a listener address like "127.0.0.1:1234".
func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func dialTimeout(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, 2*time.Second) }
