package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/dnstest"
)

// TestOnlyDecidedNamesResolved: whatever spelling a client uses, egressd asks its
// DNS upstream only about names that a rule allowed, in the form the rule has.
func TestOnlyDecidedNamesResolved(t *testing.T) {
	t.Parallel()
	origin := httpOrigin(t)
	op := port(t, origin.Listener.Addr().String())
	dnsSrv := dnstest.Start(t, map[string]dnstest.Record{"ok.wild.test": {A: []string{"127.0.0.1"}}})
	d := startDaemon(t, daemonConfig{
		dnsServer: dnsSrv,
		files:     map[string]string{"allow.d/a.txt": "*.wild.test:" + op + "\n127.0.0.1/32\n"},
	})
	for _, msg := range []string{
		"GET http://ok\uff0ewild.test:" + op + "/ HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET http://OK.WILD.TEST.:" + op + "/ HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST http://ok\u3002wild.test:" + op + "/ HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
		"CONNECT ok\uff0ewild.test:" + op + " HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET http://denied.test:" + op + "/ HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		c, err := dialTimeout(d.proxy)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, msg)
		resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: strings.Fields(msg)[0]})
		c.Close()
		want := 200
		if strings.Contains(msg, "denied.test") {
			want = 403
		}
		if err != nil || resp.StatusCode != want {
			t.Errorf("%q: %v, %v; want %d", strings.Fields(msg)[:2], resp, err, want)
		}
	}
	names := dnsSrv.Names()
	if len(names) == 0 {
		t.Fatal("the DNS fixture was never asked")
	}
	for _, n := range names {
		if n != "ok.wild.test." {
			t.Errorf("egressd asked its DNS upstream about %q; only ok.wild.test. is allowed", n)
		}
	}
}

// TestReasonPhraseInCurl: curl shows the status line, which says why.
func TestReasonPhraseInCurl(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, daemonConfig{files: map[string]string{"allow.d/a.txt": "127.0.0.1:1\n"}})
	out, _ := curl(t, nil, "-i", "-x", d.proxyURL(), "http://denied.invalid/")
	if first, _, _ := strings.Cut(out, "\r\n"); first != "HTTP/1.1 403 Forbidden by egressd: not on the allowlist" {
		t.Errorf("denied: status line %q", first)
	}
	out, _ = curl(t, nil, "-i", "-x", d.proxyURL(), "http://127.0.0.1:1/")
	if first, _, _ := strings.Cut(out, "\r\n"); first != "HTTP/1.1 502 Bad Gateway: egressd: connection to 127.0.0.1:1 refused" {
		t.Errorf("refused: status line %q", first)
	}
}

// TestExpectContinueRefusedAtOnce: an origin's early 413 reaches curl at once, not
// after curl's expect timeout.
func TestExpectContinueRefusedAtOnce(t *testing.T) {
	t.Parallel()
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "too large", http.StatusRequestEntityTooLarge) // the body is never read
	}))
	t.Cleanup(origin.Close)
	d := startDaemon(t, daemonConfig{files: map[string]string{"allow.d/a.txt": origin.Listener.Addr().String() + "\n"}})
	body := filepath.Join(t.TempDir(), "body")
	if err := os.WriteFile(body, make([]byte, 2<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, code := curl(t, nil, "-x", d.proxyURL(), "-o", "/dev/null", "-w", "%{http_code}", "-H", "Expect: 100-continue",
		"--expect100-timeout", "5", "--data-binary", "@"+body, origin.URL+"/upload")
	if took := time.Since(start); out != "413" || code != 0 || took > 2*time.Second {
		t.Errorf("curl: %q, exit %d, after %v; want 413 well within curl's 5s expect timeout", out, code, took)
	}
}

// TestHugeAnswerHeaderBounded: an allowed origin that sends a 96 MiB header costs
// egressd a few MiB at most, and the client a 502 that says why.
func TestHugeAnswerHeaderBounded(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for i := 0; i < 2; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Big: ")
				chunk := strings.Repeat("a", 1<<20)
				for j := 0; j < 96; j++ {
					if _, err := io.WriteString(c, chunk); err != nil {
						return
					}
				}
				io.WriteString(c, "\r\nContent-Length: 0\r\n\r\n")
			}()
		}
	}()
	warm := httpOrigin(t)
	d := startDaemon(t, daemonConfig{files: map[string]string{"allow.d/a.txt": ln.Addr().String() + "\n" + warm.Listener.Addr().String() + "\n"}})
	// A first ordinary request pages in what every request uses.
	if _, code := curl(t, nil, "-x", d.proxyURL(), warm.URL+"/"); code != 0 {
		t.Fatal("the warm-up request failed")
	}
	before := peakRSS(t, d)
	out, _ := curl(t, nil, "-i", "-x", d.proxyURL(), "http://"+ln.Addr().String()+"/")
	grown := peakRSS(t, d) - before
	first, _, _ := strings.Cut(out, "\r\n")
	if !strings.HasPrefix(first, "HTTP/1.1 502 ") || !strings.Contains(out, "answer headers too large") {
		t.Errorf("got %q; want a 502 saying the answer headers are too large", out)
	}
	if grown > 4<<20 {
		t.Errorf("peak RSS grew by %d MiB for a 96 MiB header; want a few MiB at most", grown>>20)
	}
	t.Logf("peak RSS grew by %d KiB", grown>>10)
}

// peakRSS is the daemon's peak resident set size (VmHWM) in bytes.
func peakRSS(t *testing.T, d *daemon) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}
