// Package etcdtest runs a real etcd server (go.etcd.io/etcd/server/v3/embed) on
// loopback ports for tests: no mock of etcd anywhere. Each server has a data
// directory of its own and stops when the test ends.
package etcdtest

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/egressd/egressd/internal/testca"
)

// Server is a running single-member etcd.
type Server struct {
	Endpoint string // http://127.0.0.1:PORT for clients
	t        testing.TB
	cfg      *embed.Config
	e        *embed.Etcd
}

// Start runs a one-member etcd on free loopback ports until the test ends.
func Start(t testing.TB) *Server { return StartTLS(t, nil) }

// StartTLS is Start with TLS for clients: a server certificate from ca, and client
// certificates from ca required. With a nil ca, it is Start.
func StartTLS(t testing.TB, ca *testca.CA) *Server {
	t.Helper()
	scheme := "http"
	if ca != nil {
		scheme = "https"
	}
	ports := FreePorts(t, 2)
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	cfg := MemberConfig("default", t.TempDir(), fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[0]), peer, "default="+peer)
	if ca != nil {
		dir := t.TempDir()
		cert, key := ca.Issue(t, "127.0.0.1", time.Now().Add(time.Hour), false)
		for name, data := range map[string]string{"ca.pem": ca.PEM, "server.pem": cert, "server.key": key} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		cfg.ClientTLSInfo = transport.TLSInfo{
			CertFile: filepath.Join(dir, "server.pem"), KeyFile: filepath.Join(dir, "server.key"),
			TrustedCAFile: filepath.Join(dir, "ca.pem"), ClientCertAuth: true,
		}
	}
	s := &Server{t: t, cfg: cfg, Endpoint: cfg.ListenClientUrls[0].String()}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

// MemberConfig is the configuration of one quiet etcd member named name, with its
// data under dir, serving clients at clientURL and peers at peerURL, in the cluster
// initialCluster ("name=peerURL,..."). The e2e tests run members as processes
// of their own with it.
func MemberConfig(name, dir, clientURL, peerURL, initialCluster string) *embed.Config {
	cfg := embed.NewConfig()
	cfg.Name, cfg.Dir = name, dir
	cfg.Logger, cfg.LogLevel = "zap", "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	client, _ := url.Parse(clientURL)
	peer, _ := url.Parse(peerURL)
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.InitialCluster, cfg.InitialClusterToken = initialCluster, "etcdtest"
	return cfg
}

// Launch starts the member cfg describes and waits up to wait for it to be ready
// (a member of a cluster is not, until a quorum is up).
func Launch(cfg *embed.Config, wait time.Duration) (*embed.Etcd, error) {
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case <-time.After(wait):
		e.Close()
		return nil, fmt.Errorf("etcd member %s not ready within %s", cfg.Name, wait)
	}
}

func (s *Server) start() {
	s.t.Helper()
	e, err := Launch(s.cfg, 20*time.Second)
	if err != nil {
		s.t.Fatalf("etcdtest: %v", err)
	}
	s.e = e
}

// Restart starts a stopped server again, on its data directory and ports.
func (s *Server) Restart() {
	s.t.Helper()
	if s.e == nil {
		s.start()
	}
}

// Stop stops the server; the test's cleanup calls it too.
func (s *Server) Stop() {
	if s.e != nil {
		s.e.Close()
		s.e = nil
	}
}

// Cluster is a running etcd cluster of several members, each an embedded server
// of this process on loopback ports of its own.
type Cluster struct {
	Members   []*Server
	Endpoints []string // every member's client URL
}

// StartCluster runs an n-member etcd cluster until the test ends.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	ports := FreePorts(t, 2*n)
	c := &Cluster{}
	var initial []string
	for i := range n {
		initial = append(initial, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, ports[2*i+1]))
	}
	for i := range n {
		client := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i])
		cfg := MemberConfig(fmt.Sprintf("m%d", i), t.TempDir(), client, fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]), strings.Join(initial, ","))
		c.Members = append(c.Members, &Server{t: t, cfg: cfg, Endpoint: client})
		c.Endpoints = append(c.Endpoints, client)
	}
	// The members start together: none is ready before a quorum is up.
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, m := range c.Members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.e, errs[i] = Launch(m.cfg, 30*time.Second)
		}()
	}
	wg.Wait()
	for _, m := range c.Members {
		t.Cleanup(m.Stop)
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	return c
}

// FreePorts returns n loopback ports that were free a moment ago.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}
