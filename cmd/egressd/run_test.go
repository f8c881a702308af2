package main

import (
	"bytes"
	"context"
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
	ok            bool
	want          string // in check's output when it fails
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
