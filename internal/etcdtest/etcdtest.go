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
	cfg := embed.NewConfig()
	scheme := "http"
	if ca != nil {
		scheme = "https"
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
	cfg.Dir = t.TempDir()
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	client, _ := url.Parse(scheme + "://127.0.0.1:0")
	peer, _ := url.Parse("http://127.0.0.1:0")
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	s := &Server{t: t, cfg: cfg}
	s.start()
	s.Endpoint = fmt.Sprintf("%s://%s", scheme, s.e.Clients[0].Addr().String())
	// A restart keeps the ports it was given.
	clientURL, _ := url.Parse(s.Endpoint)
	peerURL, _ := url.Parse(fmt.Sprintf("http://%s", s.e.Peers[0].Addr().String()))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*clientURL}, []url.URL{*clientURL}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peerURL}, []url.URL{*peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start() {
	s.t.Helper()
	e, err := embed.StartEtcd(s.cfg)
	if err != nil {
		s.t.Fatalf("etcdtest: %v", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(20 * time.Second):
		e.Close()
		s.t.Fatal("etcdtest: etcd not ready within 20s")
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
	ports := freePorts(t, 2*n)
	c := &Cluster{}
	var initial []string
	for i := range n {
		initial = append(initial, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, ports[2*i+1]))
	}
	for i := range n {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = t.TempDir()
		cfg.Logger = "zap"
		cfg.LogLevel = "error"
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		client, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", ports[2*i]))
		peer, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]))
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
		cfg.InitialCluster = strings.Join(initial, ",")
		cfg.InitialClusterToken = "etcdtest"
		c.Members = append(c.Members, &Server{t: t, cfg: cfg, Endpoint: client.String()})
		c.Endpoints = append(c.Endpoints, client.String())
	}
	// The members start together: none is ready before a quorum is up.
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, m := range c.Members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e, err := embed.StartEtcd(m.cfg)
			if err != nil {
				errs[i] = err
				return
			}
			m.e = e
			select {
			case <-e.Server.ReadyNotify():
			case <-time.After(30 * time.Second):
				errs[i] = fmt.Errorf("member %d not ready within 30s", i)
			}
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

// freePorts returns n loopback ports that were free a moment ago.
func freePorts(t testing.TB, n int) []int {
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
