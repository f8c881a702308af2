package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// benchTransparent measures, in one run, new connections per second and egressd's
// CPU per connection through the transparent path (a client with no proxy settings,
// redirected by egressd netns-setup's rules) beside the CONNECT path, each connection
// carrying one small HTTP request and answer. It runs in a network namespace it
// makes, with addresses that exist only there; it needs root.
func benchTransparent(s settings, dir string) error {
	if os.Geteuid() != 0 {
		fmt.Println("\ntransparent: skipped (needs root, to make a network namespace)")
		return nil
	}
	ns := fmt.Sprintf("egressd-bench-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add: %v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	in := func(uid int, args ...string) *exec.Cmd {
		full := []string{"--net=/run/netns/" + ns}
		if uid != 0 {
			full = append(full, "-S", strconv.Itoa(uid), "-G", strconv.Itoa(uid))
		}
		cmd := exec.Command("nsenter", append(append(full, "--"), args...)...)
		cmd.Dir = dir
		return cmd
	}
	for _, args := range [][]string{{"ip", "link", "set", "lo", "up"}, {"ip", "addr", "add", "192.0.2.10/32", "dev", "lo"}} {
		if out, err := in(0, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %v: %s", args, err, out)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	bin := filepath.Join(dir, "bench-helper")
	data, err := os.ReadFile(self)
	if err != nil {
		return err
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		return err
	}
	origin := in(0, bin, "-serve-origin", "192.0.2.10:8080")
	if err := origin.Start(); err != nil {
		return err
	}
	defer func() { origin.Process.Kill(); origin.Wait() }()

	tdir := filepath.Join(dir, "transparent")
	os.MkdirAll(tdir, 0o755)
	cfg := "proxy:\n  listen: 127.0.0.1:3128\n  transparent_listen: 127.0.0.1:15001\n  max_connections: 16384\n" +
		"metrics:\n  listen: 127.0.0.1:9090\ndns:\n  upstreams: [127.0.0.1:1]\nallowlist: [allow.txt]\n"
	for name, content := range map[string]string{"egressd.yaml": cfg, "allow.txt": "192.0.2.10/32:8080\n"} {
		if err := os.WriteFile(filepath.Join(tdir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	egressdBin := filepath.Join(dir, "egressd")
	if out, err := in(0, egressdBin, "netns-setup", "--config", filepath.Join(tdir, "egressd.yaml")).CombinedOutput(); err != nil {
		return fmt.Errorf("netns-setup: %v: %s", err, out)
	}
	logf, err := os.Create(filepath.Join(tdir, "egressd.log"))
	if err != nil {
		return err
	}
	cmd := in(65532, egressdBin, "serve", "--config", filepath.Join(tdir, "egressd.yaml"))
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		return err
	}
	e := &peer{name: "egressd-transparent", cmd: cmd}
	defer e.stop()
	for i := 0; i < 500; i++ {
		if data, _ := os.ReadFile(logf.Name()); bytes.Contains(data, []byte(`"msg":"egressd started"`)) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}

	fmt.Printf("\nnew connections through egressd, one small HTTP request each, %d clients (medians of %d rounds)\n", s.tunnelConc, s.rounds)
	fmt.Printf("%-40s %18s %18s\n", "path", "connections/s", "egressd CPU/conn us")
	rates := map[string][]float64{}
	cpus := map[string][]float64{}
	modes := []string{"transparent", "connect"}
	for range s.rounds {
		for _, mode := range modes {
			before := e.cpuSeconds()
			out, err := in(1000, bin, "-conn-load", mode, strconv.Itoa(s.tunnelConc), s.duration.String()).Output()
			if err != nil {
				return fmt.Errorf("%s load: %v: %s", mode, err, out)
			}
			rate, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
			if err != nil || rate == 0 {
				return fmt.Errorf("%s load said %q", mode, out)
			}
			rates[mode] = append(rates[mode], rate)
			cpus[mode] = append(cpus[mode], (e.cpuSeconds()-before)/(rate*s.duration.Seconds())*1e6)
		}
	}
	for _, mode := range modes {
		name := map[string]string{"transparent": "transparent (redirected, no proxy set)", "connect": "CONNECT through HTTP_PROXY"}[mode]
		fmt.Printf("%-40s %18.0f %18.1f\n", name, median(rates[mode]), median(cpus[mode]))
	}
	return nil
}

// serveOrigin answers every request with 64 bytes and closes: the bench's origin
// inside the namespace.
func serveOrigin(addr string) int {
	body := strings.Repeat("x", 63) + "\n"
	srv := &http.Server{Addr: addr, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, body)
	})}
	fmt.Fprintln(os.Stderr, srv.ListenAndServe())
	return 1
}

// connLoad opens connections to the namespace's origin as fast as conc clients can
// for d, each one request and answer, and prints connections per second. mode
// "transparent" dials the origin (the rules redirect it), "connect" asks egressd's
// proxy port for a tunnel first.
func connLoad(mode string, conc int, d time.Duration) int {
	const origin = "192.0.2.10:8080"
	req := []byte("GET / HTTP/1.1\r\nHost: " + origin + "\r\nConnection: close\r\n\r\n")
	var n atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				var c net.Conn
				var err error
				if mode == "connect" {
					c, err = connect("127.0.0.1:3128", origin)
				} else {
					c, err = net.DialTimeout("tcp", origin, 5*time.Second)
				}
				if err != nil {
					continue
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Write(req); err == nil {
					if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
						io.Copy(io.Discard, resp.Body)
						if resp.StatusCode == 200 {
							n.Add(1)
						}
					}
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
	fmt.Println(float64(n.Load()) / time.Since(start).Seconds())
	return 0
}
