// Package etcdtest runs a real etcd server (go.etcd.io/etcd/server/v3/embed) on
// loopback ports for tests: no mock of etcd anywhere. Each server has a data
// directory of its own and stops when the test ends.
package etcdtest

import (
	"fmt"
	"net/url"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is a running single-member etcd.
type Server struct {
	Endpoint string // http://127.0.0.1:PORT for clients
	t        testing.TB
	cfg      *embed.Config
	e        *embed.Etcd
}

// Start runs a one-member etcd on free loopback ports until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Dir = t.TempDir()
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	client, _ := url.Parse("http://127.0.0.1:0")
	peer, _ := url.Parse("http://127.0.0.1:0")
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	s := &Server{t: t, cfg: cfg}
	s.start()
	s.Endpoint = fmt.Sprintf("http://%s", s.e.Clients[0].Addr().String())
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
