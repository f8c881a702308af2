package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/secrets"
)

// fixture is a config directory: the config text, with {dir} for the directory,
// and the files beside it.
type fixture struct {
	name   string
	config string
	files  map[string]string
	setup  func(t *testing.T, dir string) // more, such as a secrets store
	// metricsListen replaces the metrics listener's address.
	metricsListen string
	// proxyLines are more keys under proxy:, already indented.
	proxyLines string
	ok         bool
	want       string // in check's output when it fails
}

const baseConfig = `proxy:
  listen: 127.0.0.1:0
metrics:
  listen: 127.0.0.1:0
dns:
  upstreams: [127.0.0.1:1]
  hosts_file: {dir}/hosts
  resolv_conf: {dir}/resolv.conf
allowlist: [{dir}/allow.txt]
`

func newSecretsStore(t *testing.T, dir string) {
	t.Helper()
	key, err := secrets.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := secrets.WriteKeyFile(filepath.Join(dir, "secrets.key"), key); err != nil {
		t.Fatal(err)
	}
	if err := secrets.Create(filepath.Join(dir, "secrets.enc"), key, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
}

// TestCheckAgreesWithServe: check fails exactly when serve refuses to start, with
// serve run in process on a context already canceled (it starts, then stops at once).
func TestCheckAgreesWithServe(t *testing.T) {
	functions := "functions:\n  - name: f\n    url: http://127.0.0.1:1/\n    state: productive\n"
	tests := []fixture{
		{name: "valid", ok: true},
		{name: "broken allowlist", files: map[string]string{"allow.txt": "*.*.example.com\n"}, want: "only one wildcard"},
		{name: "admin token file missing", config: "admin:\n  listen: 127.0.0.1:0\n  token_file: {dir}/admin.token\n", want: "admin.token"},
		{name: "admin token file empty", config: "admin:\n  listen: 127.0.0.1:0\n  token_file: {dir}/admin.token\n",
			files: map[string]string{"admin.token": "\n"}, want: "is empty"},
		{name: "admin token given", config: "admin:\n  listen: 127.0.0.1:0\n  token_file: {dir}/admin.token\n",
			files: map[string]string{"admin.token": "t0k3n\n"}, ok: true},
		{name: "secrets file missing", config: "secrets:\n  file: {dir}/secrets.enc\n  key_file: {dir}/secrets.key\n",
			setup: func(t *testing.T, dir string) {
				newSecretsStore(t, dir)
				os.Remove(filepath.Join(dir, "secrets.enc"))
			}, want: "does not exist"},
		{name: "secrets key of another store", config: "secrets:\n  file: {dir}/secrets.enc\n  key_file: {dir}/other.key\n",
			setup: func(t *testing.T, dir string) {
				newSecretsStore(t, dir)
				k, _ := secrets.GenerateKey()
				secrets.WriteKeyFile(filepath.Join(dir, "other.key"), k)
			}, want: "sealed with another key"},
		{name: "secrets ok", config: "secrets:\n  file: {dir}/secrets.enc\n  key_file: {dir}/secrets.key\n", setup: newSecretsStore, ok: true},
		{name: "runtime token file empty", config: "secrets:\n  file: {dir}/secrets.enc\n  key_file: {dir}/secrets.key\n  runtime_token_file: {dir}/rt\n",
			files: map[string]string{"rt": ""}, setup: newSecretsStore, want: "is empty"},
		{name: "functions file empty", config: "scheduler:\n  functions_file: {dir}/functions.yaml\n",
			files: map[string]string{"functions.yaml": ""}, want: "no functions key"},
		{name: "functions file missing", config: "scheduler:\n  functions_file: {dir}/functions.yaml\n", want: "functions.yaml"},
		{name: "state directory missing", config: "scheduler:\n  functions_file: {dir}/functions.yaml\n  state_file: {dir}/gone/state.json\n",
			files: map[string]string{"functions.yaml": functions}, want: "is not writable"},
		{name: "upstream CA file missing", proxyLines: "  upstream_ca_file: {dir}/gone.pem\n", want: "proxy.upstream_ca_file: open"},
		{name: "upstream CA file without a certificate", proxyLines: "  upstream_ca_file: {dir}/ca.pem\n",
			files: map[string]string{"ca.pem": "not a certificate\n"}, want: "holds no PEM certificate"},
		{name: "scheduler ok", config: "scheduler:\n  functions_file: {dir}/functions.yaml\n  state_file: {dir}/state.json\n",
			files: map[string]string{"functions.yaml": functions}, ok: true},
		{name: "two listeners on one address", config: "admin:\n  listen: 127.0.0.1:9\n  token_file: {dir}/admin.token\n",
			metricsListen: "127.0.0.1:9", files: map[string]string{"admin.token": "t\n"}, want: "127.0.0.1:9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			files := map[string]string{"allow.txt": "api.example.com\n", "hosts": "127.0.0.1 localhost\n", "resolv.conf": "nameserver 127.0.0.1\n"}
			for k, v := range tt.files {
				files[k] = v
			}
			for name, content := range files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if tt.setup != nil {
				tt.setup(t, dir)
			}
			base := baseConfig
			if tt.metricsListen != "" {
				base = strings.Replace(base, "metrics:\n  listen: 127.0.0.1:0", "metrics:\n  listen: "+tt.metricsListen, 1)
			}
			base = strings.Replace(base, "proxy:\n  listen: 127.0.0.1:0\n", "proxy:\n  listen: 127.0.0.1:0\n"+tt.proxyLines, 1)
			cfg := strings.ReplaceAll(base+tt.config, "{dir}", dir)
			path := filepath.Join(dir, "egressd.yaml")
			os.WriteFile(path, []byte(cfg), 0o600)

			var out, errOut bytes.Buffer
			checkCode := run(context.Background(), []string{"check", "--config", path}, &out, &errOut)
			canceled, cancel := context.WithCancel(context.Background())
			cancel()
			var serveOut, serveErr bytes.Buffer
			serveCode := run(canceled, []string{"serve", "--config", path}, &serveOut, &serveErr)

			if (checkCode == 0) != tt.ok || (serveCode == 0) != tt.ok {
				t.Fatalf("check exit %d, serve exit %d; want both %v\ncheck: %s%s\nserve: %s", checkCode, serveCode, map[bool]string{true: "0", false: "1"}[tt.ok], out.String(), errOut.String(), serveErr.String())
			}
			if !tt.ok && !strings.Contains(errOut.String(), tt.want) {
				t.Errorf("check says %q; want it to name %q", errOut.String(), tt.want)
			}
		})
	}
}

// TestRunExitCodes: the exit codes the README's table gives, and what each says.
func TestRunExitCodes(t *testing.T) {
	t.Setenv("EGRESSD_ADMIN_TOKEN", "")
	t.Setenv("EGRESSD_SECRETS_KEY", "")
	tests := []struct {
		args       []string
		code       int
		stdoutHas  string
		stderrHas  string
		stderrLack string
	}{
		{[]string{"--help"}, 0, "Usage:", "", ""},
		{[]string{"nope"}, 2, "", `unknown command "nope"`, ""},
		{[]string{"version"}, 0, "egressd ", "", ""},
		{[]string{"version", "--help"}, 0, "", "Usage: egressd version\n\nprint the version.\n", "Flags:"},
		{[]string{"version", "extra"}, 2, "", `unexpected argument "extra"`, ""},
		{[]string{"check", "extra"}, 2, "", `unexpected argument "extra"`, ""},
		{[]string{"check", "--config", "/nonexistent/egressd.yaml"}, 1, "", "no such file or directory", ""},
		{[]string{"explain"}, 2, "", "give exactly one target", ""},
		{[]string{"explain", "http://"}, 2, "", "has no host", ""},
		{[]string{"explain", ":443"}, 2, "", "has no host", ""},
		{[]string{"explain", "ftp://api.github.com/"}, 2, "", "unsupported scheme", ""},
		{[]string{"explain", "api.github.com"}, 0, "allowed: api.github.com:443", "", ""},
		{[]string{"explain", "www.github.com"}, 1, "denied: www.github.com:443: not on the allowlist", "", ""},
		{[]string{"explain", "--config", "/nonexistent/egressd.yaml", "x.com"}, 2, "", "no such file", ""},
		{[]string{"trace"}, 2, "", "give one URL", ""},
		{[]string{"trace", "--max-hops", "0", "http://x.invalid/"}, 2, "", "give one URL", ""},
		{[]string{"denials"}, 2, "", "no admin token", ""},
		{[]string{"denials", "extra"}, 2, "", `unexpected argument "extra"`, ""},
		{[]string{"schedules", "list"}, 2, "", "no admin token", ""},
		{[]string{"schedules", "delete"}, 2, "", "", ""},
		{[]string{"secrets", "list"}, 2, "", "no admin token", ""},
		{[]string{"secrets", "init"}, 2, "", "give --file and --key-file", ""},
		{[]string{"secrets", "bogus"}, 2, "", "", ""},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(context.Background(), tt.args, &out, &errOut)
			if code != tt.code {
				t.Errorf("exit %d; want %d\nstdout: %s\nstderr: %s", code, tt.code, out.String(), errOut.String())
			}
			if !strings.Contains(out.String(), tt.stdoutHas) {
				t.Errorf("stdout %q lacks %q", out.String(), tt.stdoutHas)
			}
			if !strings.Contains(errOut.String(), tt.stderrHas) {
				t.Errorf("stderr %q lacks %q", errOut.String(), tt.stderrHas)
			}
			if tt.stderrLack != "" && strings.Contains(errOut.String(), tt.stderrLack) {
				t.Errorf("stderr %q has %q", errOut.String(), tt.stderrLack)
			}
		})
	}
}

// TestServeListenerInUse: an address another process holds makes serve exit 1 with
// the listener's name and the cause, not a panic, and the listeners opened before it
// are closed again.
func TestServeListenerInUse(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	freeAddr := free.Addr().String()
	free.Close()
	for _, tt := range []struct{ name, proxy, metrics, want string }{
		{"proxy", held.Addr().String(), "127.0.0.1:0", "proxy listener"},
		{"metrics", freeAddr, held.Addr().String(), "metrics listener"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, content := range map[string]string{"allow.txt": "api.example.com\n", "hosts": "127.0.0.1 localhost\n", "resolv.conf": "nameserver 127.0.0.1\n"} {
				os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600)
			}
			cfg := strings.Replace(baseConfig, "proxy:\n  listen: 127.0.0.1:0", "proxy:\n  listen: "+tt.proxy, 1)
			cfg = strings.Replace(cfg, "metrics:\n  listen: 127.0.0.1:0", "metrics:\n  listen: "+tt.metrics, 1)
			path := filepath.Join(dir, "egressd.yaml")
			os.WriteFile(path, []byte(strings.ReplaceAll(cfg, "{dir}", dir)), 0o600)
			canceled, cancel := context.WithCancel(context.Background())
			cancel()
			var out, errOut bytes.Buffer
			if code := run(canceled, []string{"serve", "--config", path}, &out, &errOut); code != 1 {
				t.Fatalf("serve exit %d; want 1\n%s", code, errOut.String())
			}
			if !strings.Contains(errOut.String(), tt.want) || !strings.Contains(errOut.String(), "address already in use") {
				t.Errorf("serve says %q; want %q and the cause", errOut.String(), tt.want)
			}
			// The proxy listener opened before the metrics one failed is closed again.
			ln, err := net.Listen("tcp", freeAddr)
			if err != nil {
				t.Fatalf("the proxy's address is still held after serve failed: %v", err)
			}
			ln.Close()
		})
	}
}
