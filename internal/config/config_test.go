package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/configs"
)

func TestInvalidConfigs(t *testing.T) {
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata configs: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			want, err := os.ReadFile(strings.TrimSuffix(f, ".yaml") + ".err")
			if err != nil {
				t.Fatal(err)
			}
			c, err := LoadFile(f)
			if err == nil {
				t.Fatalf("LoadFile(%s) = %+v; want an error", f, c)
			}
			if got, want := err.Error(), strings.TrimSpace(string(want)); got != want {
				t.Errorf("LoadFile(%s) error:\n%s\nwant:\n%s", f, got, want)
			}
		})
	}
}

func TestDefaultsAndRelativePaths(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "egressd.yaml")
	if err := os.WriteFile(f, []byte("allowlist: [allow.d/, /etc/egressd/extra.txt]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := LoadFile(f)
	if err != nil {
		t.Fatalf("LoadFile: %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"mode", c.Mode, ModeEnforce},
		{"proxy.listen", c.Proxy.Listen, "127.0.0.1:3128"},
		{"metrics.listen", c.Metrics.Listen, "127.0.0.1:9090"},
		{"proxy.dial_timeout", c.Proxy.DialTimeout, 10 * time.Second},
		{"proxy.close_revoked_tunnels", *c.Proxy.CloseRevokedTunnels, true},
		{"allowlist[0]", c.Allowlist[0], filepath.Join(dir, "allow.d")},
		{"allowlist[1]", c.Allowlist[1], "/etc/egressd/extra.txt"},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v; want %v", ch.name, ch.got, ch.want)
		}
	}
}

// TestRuntimeKeys pins where GOMAXPROCS and GOGC come from: the key, else the
// environment's variable (left to the runtime: 0 here), else 1 and 200.
func TestRuntimeKeys(t *testing.T) {
	processors := func(c *Config) int { return c.Processors }
	gcPercent := func(c *Config) int { return c.GCPercent }
	cases := []struct {
		name, env, envValue, yaml string
		get                       func(*Config) int
		want                      int
		err                       string
	}{
		{"processors default", "GOMAXPROCS", "", "", processors, 1, ""},
		{"processors from the environment", "GOMAXPROCS", "3", "", processors, 0, ""},
		{"processors key over environment", "GOMAXPROCS", "3", "processors: 2\n", processors, 2, ""},
		{"processors key", "GOMAXPROCS", "", "processors: 4\n", processors, 4, ""},
		{"too many processors", "GOMAXPROCS", "", "processors: 1025\n", processors, 0, "processors: 1025 is not a processor count; write a number from 1 to 1024"},
		{"negative processors", "GOMAXPROCS", "", "processors: -1\n", processors, 0, "processors: -1 is not a processor count"},
		{"gc_percent default", "GOGC", "", "", gcPercent, 400, ""},
		{"gc_percent from the environment", "GOGC", "off", "", gcPercent, 0, ""},
		{"gc_percent key over environment", "GOGC", "50", "gc_percent: 150\n", gcPercent, 150, ""},
		{"gc_percent too large", "GOGC", "", "gc_percent: 10001\n", gcPercent, 0, "gc_percent: 10001 is out of range; write a number from 1 to 10000, or leave it out for 400"},
		{"negative gc_percent", "GOGC", "", "gc_percent: -1\n", gcPercent, 0, "gc_percent: -1 is out of range"},
		{"gc_percent off", "GOGC", "", "gc_percent: off\n", gcPercent, 0, `"off" is not a valid whole number`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(tc.env, tc.envValue)
			f := filepath.Join(t.TempDir(), "egressd.yaml")
			if err := os.WriteFile(f, []byte("allowlist: [allow.d/]\n"+tc.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			c, err := LoadFile(f)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "egressd.yaml:2:") {
					t.Fatalf("LoadFile: %v; want egressd.yaml:2: %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadFile: %v", err)
			}
			if got := tc.get(c); got != tc.want {
				t.Errorf("got %d; want %d", got, tc.want)
			}
		})
	}
}

func TestShippedConfigLoads(t *testing.T) {
	if _, err := LoadFile("../../configs/egressd.yaml"); err != nil {
		t.Fatalf("LoadFile(configs/egressd.yaml): %v", err)
	}
	e, err := LoadFS(configs.FS, configs.DefaultFile)
	if err != nil {
		t.Fatalf("LoadFS(embedded): %v", err)
	}
	if got := e.Allowlist; len(got) != 1 || got[0] != "allowlist.d" {
		t.Errorf("embedded allowlist = %q; want [allowlist.d]", got)
	}
}

func TestClusterDefaults(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "egressd.yaml")
	if err := os.WriteFile(f, []byte("allowlist: [allow.d]\ncluster:\n  etcd:\n    endpoints: [https://etcd-0.etcd:2379]\n    password_file: pw\n    username: egressd\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := LoadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	e := c.Cluster.Etcd
	if !e.Enabled() || e.Prefix != "/egressd/" || e.DialTimeout != 5*time.Second || e.SessionTTL != 10*time.Second || e.PasswordFile != filepath.Join(dir, "pw") {
		t.Errorf("cluster.etcd = %+v", e)
	}
	c, err = LoadFile(filepath.Join("..", "..", "configs", "egressd.yaml"))
	if err == nil && c.Cluster.Etcd.Enabled() {
		t.Errorf("the shipped config is in cluster mode")
	}
}
