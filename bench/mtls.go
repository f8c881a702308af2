package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/egressd/egressd/internal/testca"
)

// benchMTLS compares, in one run, a function's plain request that egressd sends over
// mutual TLS it makes itself (kept connections), the same request through a CONNECT
// tunnel with the client doing the mutual TLS, and new upstream handshakes per second
// (an origin that closes every connection). Everything is on loopback: the partner's
// name is in egressd's own hosts file and its DNS upstream is a dead loopback port.
func benchMTLS(s settings, dir string) error {
	serverCA, err := testca.NewCA("bench server CA")
	if err != nil {
		return err
	}
	clientCA, err := testca.NewCA("bench client CA")
	if err != nil {
		return err
	}
	scert, skey, err := serverCA.IssuePEM("mtls.bench.test", time.Now().Add(time.Hour), false)
	if err != nil {
		return err
	}
	ccert, ckey, err := clientCA.IssuePEM("bench-function", time.Now().Add(time.Hour), true)
	if err != nil {
		return err
	}
	keep, err := startMTLSOrigin(scert, skey, clientCA, false)
	if err != nil {
		return err
	}
	ccertClose, ckeyClose, err := serverCA.IssuePEM("close.mtls.bench.test", time.Now().Add(time.Hour), false)
	if err != nil {
		return err
	}
	closing, err := startMTLSOrigin(ccertClose, ckeyClose, clientCA, true)
	if err != nil {
		return err
	}
	mdir := filepath.Join(dir, "mtls")
	os.MkdirAll(mdir, 0o700)
	bin := filepath.Join(dir, "egressd")
	run := func(stdin string, args ...string) error {
		cmd := exec.Command(bin, args...)
		cmd.Dir, cmd.Stdin = mdir, strings.NewReader(stdin)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("egressd %v: %v: %s", args, err, out)
		}
		return nil
	}
	if err := run("", "secrets", "init", "--file", "secrets.enc", "--key-file", "secrets.key"); err != nil {
		return err
	}
	for k, v := range map[string]string{"c": ccert, "k": ckey, "ca": serverCA.PEM, "tok": "bench-token"} {
		if err := run(v, "secrets", "create", k, "--file", "secrets.enc", "--key-file", "secrets.key"); err != nil {
			return err
		}
	}
	_, keepPort, _ := net.SplitHostPort(keep)
	_, closePort, _ := net.SplitHostPort(closing)
	files := map[string]string{
		"hosts":     "127.0.0.1 mtls.bench.test close.mtls.bench.test\n",
		"allow.txt": "mtls.bench.test:" + keepPort + "\nclose.mtls.bench.test:" + closePort + "\n127.0.0.1/32\n",
		"egressd.yaml": "proxy:\n  listen: 127.0.0.1:0\n  max_connections: 16384\nmetrics:\n  listen: 127.0.0.1:0\n" +
			"dns:\n  upstreams: [127.0.0.1:1]\n  hosts_file: hosts\nallowlist: [allow.txt]\n" +
			"secrets:\n  file: secrets.enc\n  key_file: secrets.key\nupstreams:\n" +
			entry("mtls.bench.test", keepPort) + entry("close.mtls.bench.test", closePort),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(mdir, name), []byte(content), 0o600); err != nil {
			return err
		}
	}
	e, err := startEgressdWith(mdir, bin, "egressd-mtls")
	if err != nil {
		return err
	}
	defer e.stop()

	pair, err := tls.X509KeyPair([]byte(ccert), []byte(ckey))
	if err != nil {
		return err
	}
	clientTLS := &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: serverCA.Pool(), ServerName: "mtls.bench.test"}
	workloads := []struct {
		name   string
		target string
		tls    *tls.Config
	}{
		{"originated mTLS, kept connections", "http://mtls.bench.test:" + keepPort + "/", nil},
		{"CONNECT + client mTLS, kept tunnels", "https://mtls.bench.test:" + keepPort + "/", clientTLS},
		{"originated, new handshake each", "http://close.mtls.bench.test:" + closePort + "/", nil},
	}
	fmt.Printf("\nmTLS to a partner through egressd, %d clients (medians of %d rounds)\n", s.httpClients, s.rounds)
	fmt.Printf("%-40s %18s %18s %18s\n", "workload", "requests/s", "egressd CPU/req us", "p99 ms")
	for _, w := range workloads {
		var rps, cpu, p99 []float64
		for range s.rounds {
			before := e.cpuSeconds()
			r, err := httpLoadTLS(e.addr, w.target, s.httpClients, s.duration, w.tls)
			if err != nil {
				return fmt.Errorf("%s: %w", w.name, err)
			}
			rps = append(rps, r.rps)
			p99 = append(p99, r.p99)
			cpu = append(cpu, (e.cpuSeconds()-before)/(r.rps*s.duration.Seconds())*1e6)
		}
		fmt.Printf("%-40s %18.0f %18.1f %18.1f\n", w.name, median(rps), median(cpu), median(p99))
	}
	return nil
}

func entry(host, port string) string {
	return "  - host: " + host + "\n    port: " + port + "\n    tls:\n      client_certificate: c\n      client_key: k\n      ca: ca\n" +
		"    inject_headers:\n      Authorization: \"Bearer ${secret:tok}\"\n"
}

// startMTLSOrigin serves a 64-byte answer to clients with a certificate from
// clientCA; with closeEach it ends every connection after its answer.
func startMTLSOrigin(certPEM, keyPEM string, clientCA *testca.CA, closeEach bool) (string, error) {
	pair, err := tls.X509KeyPair([]byte(certPEM), []byte(keyPEM))
	if err != nil {
		return "", err
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCA.Pool()})
	if err != nil {
		return "", err
	}
	body := strings.Repeat("x", 63) + "\n"
	srv := &http.Server{ErrorLog: log.New(io.Discard, "", 0), Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if closeEach {
			w.Header().Set("Connection", "close")
		}
		io.WriteString(w, body)
	})}
	go srv.Serve(ln)
	return ln.Addr().String(), nil
}
