package cluster

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/egressd/egressd/internal/etcdtest"
	"github.com/egressd/egressd/internal/testca"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func write(t *testing.T, dir, name, data string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTLS: etcd asking for client certificates; egressd connects with
// cluster.etcd.tls, and without a client certificate, or trusting another CA, it
// does not start.
func TestTLS(t *testing.T) {
	ca := testca.New(t, "etcd-ca")
	etcd := etcdtest.StartTLS(t, ca)
	dir := t.TempDir()
	cert, key := ca.Issue(t, "egressd", time.Now().Add(time.Hour), true)
	cfg := Config{
		Endpoints: []string{etcd.Endpoint}, DialTimeout: time.Second,
		CAFile: write(t, dir, "ca.pem", ca.PEM), CertFile: write(t, dir, "client.pem", cert), KeyFile: write(t, dir, "client.key", key),
	}
	c, err := Connect(context.Background(), cfg, quiet(), nil)
	if err != nil {
		t.Fatalf("Connect over TLS with a client certificate: %v", err)
	}
	a, err := NewAllowlist(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Add("api.example.com"); err != nil {
		t.Errorf("a write over TLS: %v", err)
	}
	c.Close()

	noCert := cfg
	noCert.CertFile, noCert.KeyFile = "", ""
	if _, err := Connect(context.Background(), noCert, quiet(), nil); err == nil || !strings.Contains(err.Error(), etcd.Endpoint) {
		t.Errorf("Connect without a client certificate: %v; want an error naming the endpoint", err)
	}
	other := testca.New(t, "other-ca")
	wrongCA := cfg
	wrongCA.CAFile = write(t, dir, "other.pem", other.PEM)
	if _, err := Connect(context.Background(), wrongCA, quiet(), nil); err == nil {
		t.Errorf("Connect trusting another CA succeeded")
	}
}

// TestAuth: with etcd's auth on, egressd's user has a role on its prefix alone;
// it connects with username and password_file, and a wrong password or a prefix
// outside its role stops it at startup.
func TestAuth(t *testing.T) {
	etcd := etcdtest.Start(t)
	ctx := context.Background()
	root, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for _, step := range []func() error{
		func() error { _, err := root.UserAdd(ctx, "root", "root-pw"); return err },
		func() error { _, err := root.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := root.UserAdd(ctx, "egressd", "egressd-pw"); return err },
		func() error { _, err := root.RoleAdd(ctx, "egressd"); return err },
		func() error {
			_, err := root.RoleGrantPermission(ctx, "egressd", "/egressd/", clientv3.GetPrefixRangeEnd("/egressd/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := root.UserGrantRole(ctx, "egressd", "egressd"); return err },
		func() error { _, err := root.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	// Authenticating checks a bcrypt hash: slow on a loaded machine.
	cfg := Config{Endpoints: []string{etcd.Endpoint}, Prefix: "/egressd/", DialTimeout: 10 * time.Second,
		Username: "egressd", PasswordFile: write(t, dir, "pw", "egressd-pw\n")}
	c, err := Connect(ctx, cfg, quiet(), nil)
	if err != nil {
		t.Fatalf("Connect as egressd: %v", err)
	}
	a, err := NewAllowlist(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Add("api.example.com"); err != nil {
		t.Errorf("a write under the prefix: %v", err)
	}
	c.Close()

	wrong := cfg
	wrong.PasswordFile = write(t, dir, "wrong", "nope")
	if _, err := Connect(ctx, wrong, quiet(), nil); err == nil {
		t.Errorf("Connect with a wrong password succeeded")
	}
	outside := cfg
	outside.Prefix = "/other/"
	if _, err := Connect(ctx, outside, quiet(), nil); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("Connect to a prefix outside egressd's role: %v; want permission denied at startup", err)
	}
}
