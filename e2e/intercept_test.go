package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/testca"
)

// netns is a network namespace a test made, with addresses that exist only in it.
type netns struct {
	t    *testing.T
	name string
	dir  string // readable by every user of the test: configs, certificates, hits
	exe  string // the test binary, where every user can run it (helpers)
}

var netnsSeq atomic.Int64

// newNetns makes a namespace with loopback up and the given addresses on it; it is
// deleted when the test ends. It skips where namespaces cannot be made.
func newNetns(t *testing.T, addrs ...string) *netns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("interception tests need root, to make network namespaces (CI runs as root)")
	}
	for _, tool := range []string{"ip", "nsenter", "nft", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: .ci/run installs iproute2, util-linux, nftables and curl", tool)
		}
	}
	n := &netns{t: t, name: fmt.Sprintf("egressd-e2e-%d-%d", os.Getpid(), netnsSeq.Add(1))}
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		t.Skipf("cannot make a network namespace here: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.name).Run() })
	n.run("ip", "link", "set", "lo", "up")
	for _, a := range addrs {
		bits := "/32"
		if strings.Contains(a, ":") {
			bits = "/128"
		}
		n.run("ip", "addr", "add", a+bits, "dev", "lo")
	}
	n.dir = t.TempDir()
	// Every user of the test reads here: the directory and the one testing makes it in.
	os.Chmod(filepath.Dir(n.dir), 0o755)
	os.Chmod(n.dir, 0o755)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	n.exe = filepath.Join(n.dir, "e2e.test")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(n.exe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return n
}

// command is args run in the namespace as uid (0: root).
func (n *netns) command(uid int, args ...string) *exec.Cmd {
	full := []string{"--net=/run/netns/" + n.name}
	if uid != 0 {
		full = append(full, "-S", strconv.Itoa(uid), "-G", strconv.Itoa(uid))
	}
	cmd := exec.Command("nsenter", append(append(full, "--"), args...)...)
	cmd.Dir = n.dir
	cmd.Env = cleanEnv() // no proxy variables: a function that ignores HTTP_PROXY anyway
	cmd.Env = append(cmd.Env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	return cmd
}

// run runs args as root in the namespace and fails the test if it fails.
func (n *netns) run(args ...string) string {
	n.t.Helper()
	out, err := n.command(0, args...).CombinedOutput()
	if err != nil {
		n.t.Fatalf("%v: %v: %s", args, err, out)
	}
	return string(out)
}

// output runs args as uid with a time limit and returns stdout and whether it exited 0.
func (n *netns) output(uid int, args ...string) (string, bool) {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := n.command(uid, args...)
	cmd = exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	cmd.Dir, cmd.Env = n.dir, n.command(uid).Env
	var out bytes.Buffer
	cmd.Stdout = &out
	err := cmd.Run()
	return out.String(), err == nil
}

// start runs args as uid in the background until the test ends; wait, if set, is
// a line of its output to wait for.
func (n *netns) start(uid int, logName, wait string, args ...string) {
	n.t.Helper()
	cmd := n.command(uid, args...)
	logf, err := os.Create(filepath.Join(n.dir, logName))
	if err != nil {
		n.t.Fatal(err)
	}
	pr, pw := io.Pipe()
	cmd.Stdout = io.MultiWriter(logf, pw)
	cmd.Stderr = io.MultiWriter(logf, pw)
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		pw.Close()
		if n.t.Failed() {
			data, _ := os.ReadFile(logf.Name())
			n.t.Logf("%s:\n%s", logName, data)
		}
	})
	if wait == "" {
		go io.Copy(io.Discard, pr)
		return
	}
	found := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		ok := false
		for sc.Scan() {
			if !ok && strings.Contains(sc.Text(), wait) {
				ok = true
				found <- true
			}
		}
		if !ok {
			found <- false
		}
	}()
	select {
	case ok := <-found:
		if !ok {
			n.t.Fatalf("%s ended before %q", logName, wait)
		}
	case <-time.After(15 * time.Second):
		n.t.Fatalf("%s did not say %q within 15s", logName, wait)
	}
}

func (n *netns) hits(name string) int {
	data, _ := os.ReadFile(filepath.Join(n.dir, "hits", name))
	return strings.Count(string(data), "hit\n")
}

func (n *netns) write(name, content string) string {
	n.t.Helper()
	p := filepath.Join(n.dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		n.t.Fatal(err)
	}
	return p
}

const functionUID = 1000

// TestInterception: in a namespace with egressd netns-setup's rules, a function that
// ignores HTTP_PROXY (curl with no proxy settings, a raw TCP client, a DNS client,
// running as another user) is held to the allowlist all the same.
func TestInterception(t *testing.T) {
	n := newNetns(t, "192.0.2.10", "192.0.2.20", "192.0.2.30", "192.0.2.31", "2001:db8::20")
	ca := testca.New(t, "interception CA")
	os.Mkdir(filepath.Join(n.dir, "hits"), 0o777)
	cert, key := ca.Issue(t, "allowed.test", time.Now().Add(time.Hour), false)
	dcert, dkey := ca.Issue(t, "denied.test", time.Now().Add(time.Hour), false)
	n.write("ca.pem", ca.PEM)
	n.write("allowed.pem", cert)
	n.write("allowed.key", key)
	n.write("denied.pem", dcert)
	n.write("denied.key", dkey)
	n.start(0, "origins.log", "ready", "env", "EGRESSD_E2E_HELPER=origins", n.exe, filepath.Join(n.dir, "hits"),
		"tls 192.0.2.10:443 allowed allowed.pem allowed.key", "http 192.0.2.10:80 allowed-http",
		"tls 192.0.2.20:443 denied denied.pem denied.key", "http 192.0.2.20:80 denied-http",
		"echo 192.0.2.30:7000 ip-rule", "echo 192.0.2.31:7000 no-rule")

	n.write("hosts", "127.0.0.1 localhost\n192.0.2.10 allowed.test\n192.0.2.20 denied.test\n")
	n.write("allow.txt", "allowed.test\n192.0.2.30/32:7000\n")
	config := func(verify bool) string {
		return n.write("egressd.yaml", fmt.Sprintf(`proxy:
  listen: 127.0.0.1:3128
  transparent_listen: 127.0.0.1:15001
  transparent_verify_destination: %v
metrics:
  listen: 127.0.0.1:9090
dns:
  upstreams: [127.0.0.1:1]
  hosts_file: hosts
  resolv_conf: hosts
  listen: 127.0.0.1:15053
  allow_private: [192.0.2.0/24]   # the namespace's test addresses: not IP targets, just not guarded
allowlist: [allow.txt]
`, verify))
	}
	cfg := config(false)
	out := n.run(binary, "netns-setup", "--config", cfg)
	if !strings.Contains(out, "installed table inet egressd") {
		t.Fatalf("netns-setup: %s", out)
	}
	n.run(binary, "netns-setup", "--config", cfg) // twice: still one table
	if got := n.run("nft", "list", "tables"); strings.Count(got, "egressd") != 1 {
		t.Fatalf("tables after two netns-setup runs:\n%s", got)
	}
	n.start(65532, "egressd.log", `"msg":"egressd started"`, binary, "serve", "--config", cfg)

	curl := func(args ...string) (string, bool) {
		return n.output(functionUID, append([]string{"curl", "-sS", "--max-time", "5", "--cacert", "ca.pem"}, args...)...)
	}
	t.Run("allowed https", func(t *testing.T) {
		if out, ok := curl("--resolve", "allowed.test:443:192.0.2.10", "https://allowed.test/"); !ok || out != "hello from allowed\n" {
			t.Errorf("curl https://allowed.test/: %q, %v", out, ok)
		}
	})
	t.Run("denied https", func(t *testing.T) {
		if out, ok := curl("--resolve", "denied.test:443:192.0.2.20", "https://denied.test/"); ok {
			t.Errorf("curl https://denied.test/ succeeded: %q", out)
		}
		if h := n.hits("denied"); h != 0 {
			t.Errorf("the denied origin got %d connections", h)
		}
	})
	t.Run("raw tcp", func(t *testing.T) {
		if out, ok := n.output(functionUID, "env", "EGRESSD_E2E_HELPER=dial", n.exe, "192.0.2.31:7000"); ok {
			t.Errorf("a raw connection to an address with no rule: %q", out)
		}
		if h := n.hits("no-rule"); h != 0 {
			t.Errorf("the origin with no rule got %d connections", h)
		}
		if out, ok := n.output(functionUID, "env", "EGRESSD_E2E_HELPER=dial", n.exe, "192.0.2.30:7000"); !ok || out != "pong from ip-rule\n" {
			t.Errorf("a raw connection to an address with an IP rule: %q, %v", out, ok)
		}
	})
	t.Run("ipv6", func(t *testing.T) {
		// An IPv6 address of the namespace with nothing on it: the rules take the
		// connection to egressd's [::1] listener, which dials the name's own address.
		out, ok := curl("-6", "--resolve", "allowed.test:443:[2001:db8::20]", "https://allowed.test/")
		if !ok || out != "hello from allowed\n" {
			t.Errorf("https://allowed.test/ over IPv6: %q, %v", out, ok)
		}
		if out, ok := curl("-6", "--resolve", "denied.test:443:[2001:db8::20]", "https://denied.test/"); ok {
			t.Errorf("https://denied.test/ over IPv6 went through: %q", out)
		}
	})
	t.Run("sni spoofing", func(t *testing.T) {
		before := n.hits("denied")
		out, ok := curl("--resolve", "allowed.test:443:192.0.2.20", "https://allowed.test/")
		if !ok || out != "hello from allowed\n" {
			t.Errorf("an allowed SNI sent to the denied origin's address: %q, %v; want the allowed host's answer", out, ok)
		}
		if h := n.hits("denied"); h != before {
			t.Error("the denied origin got the connection")
		}
	})
	t.Run("host header spoofing", func(t *testing.T) {
		out, ok := curl("--resolve", "allowed.test:80:192.0.2.20", "http://allowed.test/")
		if !ok || out != "hello from allowed-http\n" {
			t.Errorf("an allowed Host sent to the denied origin's address: %q, %v", out, ok)
		}
		if h := n.hits("denied-http"); h != 0 {
			t.Error("the denied origin got the request")
		}
		out, _ = curl("--resolve", "denied.test:80:192.0.2.20", "-i", "http://denied.test/")
		if !strings.HasPrefix(out, "HTTP/1.1 403 Forbidden by egressd: not on the allowlist") {
			t.Errorf("plain HTTP to a denied host: %q; want the proxy's 403", out)
		}
	})
	t.Run("dns", func(t *testing.T) {
		for name, want := range map[string]string{"allowed.test": "NOERROR 192.0.2.10\n", "denied.test": "REFUSED \n"} {
			if out, _ := n.output(functionUID, "env", "EGRESSD_E2E_HELPER=dns", n.exe, "192.0.2.30:53", name); out != want { // an address of the namespace: no route leads elsewhere
				t.Errorf("DNS for %s from the function: %q; want %q", name, out, want)
			}
		}
	})
	t.Run("egressd's own user is not redirected", func(t *testing.T) {
		before := n.hits("no-rule")
		if out, ok := n.output(65532, "env", "EGRESSD_E2E_HELPER=dial", n.exe, "192.0.2.31:7000"); !ok || out != "pong from no-rule\n" {
			t.Errorf("uid 65532 to an address with no rule: %q, %v; want straight through", out, ok)
		}
		if n.hits("no-rule") != before+1 {
			t.Error("the origin did not see egressd's user's connection")
		}
	})
	t.Run("HTTP_PROXY beside interception", func(t *testing.T) {
		out, ok := n.output(functionUID, "curl", "-sS", "--max-time", "5", "-x", "http://127.0.0.1:3128", "http://allowed.test/")
		if !ok || out != "hello from allowed-http\n" {
			t.Errorf("curl -x 127.0.0.1:3128: %q, %v", out, ok)
		}
	})
	t.Run("access log and metrics", func(t *testing.T) {
		logs, _ := os.ReadFile(filepath.Join(n.dir, "egressd.log"))
		for _, want := range []string{`"method":"tls","target":"allowed.test:443","decision":"allow"`, `"target":"denied.test:443","decision":"deny"`} {
			if !strings.Contains(string(logs), want) {
				t.Errorf("egressd's log lacks %s", want)
			}
		}
		metrics, _ := n.output(0, "curl", "-s", "http://127.0.0.1:9090/metrics")
		if !strings.Contains(metrics, `egressd_requests_total{decision="deny",kind="transparent"}`) {
			t.Error("no transparent denials in the metrics")
		}
	})
	t.Run("verify destination", func(t *testing.T) {
		stopEgressd(t, n)
		cfg := config(true)
		n.start(65532, "egressd-verify.log", `"msg":"egressd started"`, binary, "serve", "--config", cfg)
		if out, ok := curl("--resolve", "allowed.test:443:192.0.2.20", "https://allowed.test/"); ok {
			t.Errorf("with transparent_verify_destination, a spoofed SNI went through: %q", out)
		}
		if out, ok := curl("--resolve", "allowed.test:443:192.0.2.10", "https://allowed.test/"); !ok || out != "hello from allowed\n" {
			t.Errorf("with transparent_verify_destination, the right address: %q, %v", out, ok)
		}
	})
	t.Run("remove", func(t *testing.T) {
		n.run(binary, "netns-setup", "--remove")
		if got := n.run("nft", "list", "tables"); strings.Contains(got, "egressd") {
			t.Errorf("tables after --remove:\n%s", got)
		}
	})
}

// stopEgressd ends the namespace's egressd (the one started as uid 65532).
func stopEgressd(t *testing.T, n *netns) {
	t.Helper()
	exec.Command("pkill", "-f", "serve --config "+filepath.Join(n.dir, "egressd.yaml")).Run()
	for i := 0; i < 100; i++ {
		if _, ok := n.output(0, "curl", "-s", "--max-time", "1", "http://127.0.0.1:9090/healthz"); !ok {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("egressd did not stop")
}
