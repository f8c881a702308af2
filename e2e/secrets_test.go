package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/egressd/egressd/secrets"
)

// secretsDaemon provisions a store with the CLI (init, then create) and starts
// egressd on it with the admin API.
type secretsSetup struct {
	dir, file, keyFile, token string
}

func provisionSecrets(t *testing.T, dir string, values map[string]string) secretsSetup {
	t.Helper()
	s := secretsSetup{dir: dir, file: filepath.Join(dir, "secrets.enc"), keyFile: filepath.Join(dir, "secrets.key"), token: "admin-" + strconv.FormatInt(time.Now().UnixNano(), 36)}
	if _, stderr, code := egressd(t, dir, "secrets", "init", "--file", s.file, "--key-file", s.keyFile); code != 0 {
		t.Fatalf("secrets init: %s", stderr)
	}
	for k, v := range values {
		cmd := execIn(t, dir, strings.NewReader(v), "secrets", "create", k, "--file", s.file, "--key-file", s.keyFile)
		if cmd.code != 0 {
			t.Fatalf("secrets create %s: %s", k, cmd.stderr)
		}
	}
	writeFile(t, filepath.Join(dir, "admin.token"), s.token+"\n")
	return s
}

func secretsConfig(s secretsSetup, extra string) string {
	return fmt.Sprintf("admin:\n  listen: 127.0.0.1:0\n  token_file: %s\nsecrets:\n  file: %s\n  key_file: %s\n%s",
		filepath.Join(s.dir, "admin.token"), s.file, s.keyFile, extra)
}

// runtimeCall sends one runtime API request through client to base (the proxy port in
// origin form, or http://egressd.internal through the proxy).
func runtimeCall(t *testing.T, client *http.Client, method, url, body string, header ...string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	var v map[string]any
	json.NewDecoder(resp.Body).Decode(&v)
	return resp.StatusCode, v
}

func TestSecretsRuntimeAndAdmin(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := provisionSecrets(t, dir, map[string]string{"oauth-token": "tok-value-1"})
	d := startDaemon(t, daemonConfig{extra: secretsConfig(s, "")})
	direct := "http://" + d.proxy + "/v1/secrets/"
	viaProxy := "http://egressd.internal/v1/secrets/"
	plain := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	proxied := d.client()

	for _, tt := range []struct {
		name   string
		client *http.Client
		base   string
	}{{"origin form on the proxy port", plain, direct}, {"egressd.internal through the proxy", proxied, viaProxy}} {
		t.Run(tt.name, func(t *testing.T) {
			code, v := runtimeCall(t, tt.client, "GET", tt.base+"oauth-token", "")
			if code != 200 || v["value"] == nil || v["key"] != "oauth-token" {
				t.Fatalf("GET = %d %v", code, v)
			}
			ver := int(v["version"].(float64))
			code, v = runtimeCall(t, tt.client, "PUT", tt.base+"oauth-token", `{"value":"refreshed-`+strconv.Itoa(ver)+`"}`, "If-Match", strconv.Quote(strconv.Itoa(ver)))
			if code != 200 || int(v["version"].(float64)) != ver+1 {
				t.Fatalf("PUT with If-Match = %d %v; want version %d", code, v, ver+1)
			}
			if code, _ := runtimeCall(t, tt.client, "PUT", tt.base+"oauth-token", `{"value":"stale"}`, "If-Match", strconv.Quote(strconv.Itoa(ver))); code != 412 {
				t.Errorf("PUT with a stale If-Match = %d; want 412", code)
			}
			if code, _ := runtimeCall(t, tt.client, "PUT", tt.base+"no-such-key", `{"value":"x"}`); code != 404 {
				t.Errorf("PUT of an unknown key = %d; want 404 (functions cannot create)", code)
			}
			if code, _ := runtimeCall(t, tt.client, "DELETE", tt.base+"oauth-token", ""); code != 405 {
				t.Errorf("DELETE from a function = %d; want 405", code)
			}
			if code, _ := runtimeCall(t, tt.client, "POST", strings.TrimSuffix(tt.base, "/"), `{"key":"new","value":"x"}`); code != 405 {
				t.Errorf("POST from a function = %d; want 405", code)
			}
		})
	}

	adminURL := "http://" + d.admin
	env := []string{"EGRESSD_ADMIN_TOKEN=" + s.token}
	t.Run("operators through the admin API", func(t *testing.T) {
		r := execInEnv(t, dir, env, strings.NewReader("created-by-operator\n"), "secrets", "create", "db-password", "--admin", adminURL)
		if r.code != 0 {
			t.Fatalf("secrets create: %s", r.stderr)
		}
		if r := execInEnv(t, dir, env, strings.NewReader("again"), "secrets", "create", "db-password", "--admin", adminURL); r.code != 1 || !strings.Contains(r.stderr, "409") {
			t.Errorf("creating it twice = exit %d, %q; want 1 and 409", r.code, r.stderr)
		}
		code, v := runtimeCall(t, plain, "GET", direct+"db-password", "")
		if code != 200 || v["value"] != "created-by-operator" {
			t.Errorf("the function reads %d %v; want the value without the newline", code, v)
		}
		out, _, code2 := egressdEnv(t, dir, env, "secrets", "list", "--admin", adminURL, "--json")
		if code2 != 0 || !strings.Contains(out, `"db-password"`) || strings.Contains(out, "created-by-operator") || strings.Contains(out, "refreshed") {
			t.Errorf("list = exit %d:\n%s\nwant keys without values", code2, out)
		}
		if _, stderr, code := egressdEnv(t, dir, env, "secrets", "delete", "db-password", "--admin", adminURL); code != 0 {
			t.Fatalf("delete: %s", stderr)
		}
		if code, _ := runtimeCall(t, plain, "GET", direct+"db-password", ""); code != 404 {
			t.Errorf("GET after delete = %d; want 404 at once", code)
		}
	})
	t.Run("values never in the log or metrics", func(t *testing.T) {
		logs, metrics := d.logs.String(), d.scrape()
		for _, v := range []string{"tok-value-1", "refreshed-", "created-by-operator", "stale"} {
			if strings.Contains(logs, v) || strings.Contains(metrics, v) {
				t.Errorf("a secret value %q appears in the log or metrics", v)
			}
		}
		if !strings.Contains(metrics, "egressd_secrets ") || !strings.Contains(metrics, `egressd_secrets_operations_total{op="update",result="conflict"} 2`) {
			t.Errorf("secrets metrics missing or wrong:\n%s", grepLines(metrics, "egressd_secrets"))
		}
	})
}

func TestSecretsRuntimeToken(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := provisionSecrets(t, dir, map[string]string{"k": "v"})
	writeFile(t, filepath.Join(dir, "runtime.token"), "fn-token\n")
	d := startDaemon(t, daemonConfig{extra: secretsConfig(s, "  runtime_token_file: "+filepath.Join(dir, "runtime.token")+"\n")})
	plain := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	u := "http://" + d.proxy + "/v1/secrets/k"
	if code, _ := runtimeCall(t, plain, "GET", u, ""); code != 401 {
		t.Errorf("GET without the runtime token = %d; want 401", code)
	}
	for _, auth := range []string{"fn-token", "Bearer fn-toke", "Bearer fn-token2", "Bearer ", "Basic Zm4tdG9rZW4="} {
		if code, _ := runtimeCall(t, plain, "GET", u, "", "Authorization", auth); code != 401 {
			t.Errorf("GET with Authorization %q = %d; want 401", auth, code)
		}
	}
	if code, _ := runtimeCall(t, plain, "GET", u, "", "Authorization", "Bearer fn-token"); code != 200 {
		t.Errorf("GET with the runtime token = %d; want 200", code)
	}
}

func TestSecretsBadFileStopsStart(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		corrupt func(t *testing.T, s secretsSetup)
		want    string
	}{
		{"tampered", func(t *testing.T, s secretsSetup) {
			b, _ := os.ReadFile(s.file)
			b[len(b)-5] ^= 0xff
			os.WriteFile(s.file, b, 0o600)
		}, "fails authentication"},
		{"truncated", func(t *testing.T, s secretsSetup) {
			b, _ := os.ReadFile(s.file)
			os.WriteFile(s.file, b[:len(b)/2], 0o600)
		}, "fails authentication"},
		{"wrong key", func(t *testing.T, s secretsSetup) {
			os.Remove(s.keyFile)
			k, _ := secrets.GenerateKey()
			secrets.WriteKeyFile(s.keyFile, k)
		}, "sealed with another key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			s := provisionSecrets(t, dir, map[string]string{"k": "v"})
			tc.corrupt(t, s)
			before, _ := os.ReadFile(s.file)
			cfgDir := writeConfig(t, daemonConfig{extra: secretsConfig(s, "")})
			_, stderr, code := egressd(t, cfgDir, "serve", "--config", "egressd.yaml")
			if code != 1 || !strings.Contains(stderr, tc.want) {
				t.Errorf("serve = exit %d, %q; want 1 and %q", code, stderr, tc.want)
			}
			if after, _ := os.ReadFile(s.file); !bytes.Equal(before, after) {
				t.Error("egressd changed the bad file")
			}
		})
	}
}

// TestSecretsSurviveSIGKILL updates a secret in a loop and kills egressd with SIGKILL
// in the middle: the file must open and hold the last acknowledged update.
func TestSecretsSurviveSIGKILL(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := provisionSecrets(t, dir, map[string]string{"counter": "0"})
	d := startDaemon(t, daemonConfig{extra: secretsConfig(s, "")})
	plain := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	u := "http://" + d.proxy + "/v1/secrets/counter"
	var lastAcked int64
	lastValue := ""
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; i <= 2000; i++ {
			req, _ := http.NewRequest("PUT", u, strings.NewReader(`{"value":"n-`+strconv.Itoa(i)+`"}`))
			resp, err := plain.Do(req)
			if err != nil {
				return // killed
			}
			var v struct{ Version int64 }
			json.NewDecoder(resp.Body).Decode(&v)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return
			}
			lastAcked, lastValue = v.Version, "n-"+strconv.Itoa(i)
		}
	}()
	time.Sleep(400 * time.Millisecond)
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-done
	if lastAcked < 2 {
		t.Fatalf("only %d updates were acknowledged before the kill; the test needs some", lastAcked)
	}
	key, err := secrets.ReadKeyFile(s.keyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	store, err := secrets.Open(secrets.Options{File: s.file, Key: key})
	if err != nil {
		t.Fatalf("the file does not open after SIGKILL: %v", err)
	}
	got, err := store.Get("counter")
	if err != nil {
		t.Fatal(err)
	}
	// The update in flight at the kill may have landed without its answer.
	if got.Version < lastAcked || got.Version > lastAcked+1 {
		t.Errorf("after SIGKILL the secret is at version %d; the last acknowledged was %d", got.Version, lastAcked)
	}
	if got.Version == lastAcked && got.Value.Reveal() != lastValue {
		t.Errorf("version %d holds %q; the acknowledged value was %q", got.Version, got.Value.Reveal(), lastValue)
	}
	t.Logf("%d updates acknowledged before SIGKILL; file at version %d", lastAcked, got.Version)
}

// TestSecretsTwoProcesses runs two egressd on one secrets file and updates the same
// secret through both at once: no acknowledged version is handed out twice, and the
// file ends at the highest one.
func TestSecretsTwoProcesses(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := provisionSecrets(t, dir, map[string]string{"shared": "0"})
	d1 := startDaemon(t, daemonConfig{extra: secretsConfig(s, "")})
	d2 := startDaemon(t, daemonConfig{extra: strings.Replace(secretsConfig(s, ""), "admin:\n  listen: 127.0.0.1:0\n  token_file: "+filepath.Join(s.dir, "admin.token")+"\n", "", 1)})
	plain := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 8}}
	var mu sync.Mutex
	versions := map[int64]string{}
	var wg sync.WaitGroup
	for w := 0; w < 6; w++ {
		proxyAddr := d1.proxy
		if w%2 == 1 {
			proxyAddr = d2.proxy
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				val := fmt.Sprintf("w%d-%d", w, i)
				code, v := runtimeCall(t, plain, "PUT", "http://"+proxyAddr+"/v1/secrets/shared", `{"value":"`+val+`"}`)
				if code != 200 {
					t.Errorf("PUT = %d %v", code, v)
					return
				}
				ver := int64(v["version"].(float64))
				mu.Lock()
				if prev, dup := versions[ver]; dup {
					t.Errorf("version %d acknowledged for %s and %s: a lost update", ver, prev, val)
				}
				versions[ver] = val
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	var max int64
	for v := range versions {
		max = max1(max, v)
	}
	for _, d := range []*daemon{d1, d2} {
		code, v := runtimeCall(t, plain, "GET", "http://"+d.proxy+"/v1/secrets/shared", "")
		if code != 200 || int64(v["version"].(float64)) != max || v["value"] != versions[max] {
			t.Errorf("read through %s = %d %v; want version %d %q", d.proxy, code, v, max, versions[max])
		}
	}
	if max != 121 {
		t.Errorf("final version %d after 120 updates of version 1; want 121", max)
	}
}

func max1(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

type execResult struct {
	stdout, stderr string
	code           int
}

func execIn(t *testing.T, dir string, stdin io.Reader, args ...string) execResult {
	return execInEnv(t, dir, nil, stdin, args...)
}

func grepLines(text, substr string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestSecretsCreateIfMissing: on a fresh volume egressd creates the store and starts;
// check approves the same config without creating anything.
func TestSecretsCreateIfMissing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if _, stderr, code := egressd(t, dir, "secrets", "init", "--file", filepath.Join(dir, "seed.enc"), "--key-file", filepath.Join(dir, "secrets.key")); code != 0 {
		t.Fatalf("secrets init: %s", stderr)
	}
	store := filepath.Join(dir, "vol", "secrets.enc")
	os.Mkdir(filepath.Join(dir, "vol"), 0o700)
	extra := fmt.Sprintf("secrets:\n  file: %s\n  key_file: %s\n  create_if_missing: true\n", store, filepath.Join(dir, "secrets.key"))
	cfgDir := writeConfig(t, daemonConfig{extra: extra})
	if _, stderr, code := egressd(t, cfgDir, "check", "--config", "egressd.yaml"); code != 0 {
		t.Fatalf("check of a config whose store will be created: exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(store); err == nil {
		t.Fatal("check created the store; it writes nothing")
	}
	d := startDaemon(t, daemonConfig{extra: extra})
	d.waitLog("secrets file created empty", 5*time.Second)
	if _, err := os.Stat(store); err != nil {
		t.Fatalf("the store was not created: %v", err)
	}
}
