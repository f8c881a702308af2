// Package cluster is egressd's one contact with etcd (go.etcd.io/etcd/client/v3):
// in cluster mode the replicas of a function share, under one key prefix, the
// state a single pod keeps in files. It connects, watches etcd's health (the
// egressd_cluster_connected gauge, a warning once per outage, caches resynced on
// reconnect) and keeps the stores that live there, each serving reads from a cache
// its watch keeps current, so that nothing on the request path waits for etcd.
package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/egressd/egressd/internal/defaults"
)

// Config is how to reach etcd.
type Config struct {
	Endpoints []string
	// Prefix is where everything egressd writes lives ("/egressd/").
	Prefix string
	// CAFile, CertFile and KeyFile are the TLS to etcd; empty, none (or the system
	// roots alone for https:// endpoints without a CAFile).
	CAFile, CertFile, KeyFile string
	// Username and PasswordFile are etcd's own auth.
	Username, PasswordFile string
	// DialTimeout bounds the first contact and each request. If zero, 5s.
	DialTimeout time.Duration
	// HealthInterval is how often etcd's health is read. If zero, 1s.
	HealthInterval time.Duration
}

// Cluster is a connection to etcd.
type Cluster struct {
	client    *clientv3.Client
	prefix    string
	timeout   time.Duration
	interval  time.Duration
	log       *slog.Logger
	connected prometheus.Gauge
	up        atomic.Bool // what the gauge says, for the console

	mu          sync.Mutex
	onReconnect []func()
}

// Connect connects to etcd and reads from the prefix once (a linearizable read,
// which needs a quorum and, with auth, the right to the prefix). It fails with an
// error naming the endpoints when that read does not succeed within DialTimeout.
func Connect(ctx context.Context, cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Cluster, error) {
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = defaults.EtcdDialTimeout
	}
	if cfg.HealthInterval == 0 {
		cfg.HealthInterval = time.Second
	}
	if cfg.Prefix == "" {
		cfg.Prefix = defaults.EtcdPrefix
	}
	ccfg := clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		Username:    cfg.Username,
		Logger:      zap.NewNop(), // outages are logged once each, by the health loop
		Context:     ctx,
	}
	if cfg.PasswordFile != "" {
		pw, err := os.ReadFile(cfg.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("cluster.etcd.password_file: %w", err)
		}
		ccfg.Password = strings.TrimSpace(string(pw))
	}
	tlsConfig, err := clientTLS(cfg)
	if err != nil {
		return nil, err
	}
	ccfg.TLS = tlsConfig
	client, err := clientv3.New(ccfg)
	if err != nil {
		return nil, fmt.Errorf("cluster.etcd: cannot use etcd at %s: %w", strings.Join(cfg.Endpoints, ", "), err)
	}
	c := &Cluster{
		client:   client,
		prefix:   cfg.Prefix,
		timeout:  cfg.DialTimeout,
		interval: cfg.HealthInterval,
		log:      log,
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "egressd_cluster_connected",
			Help: "1 when etcd answers a linearizable read (a quorum is up), 0 during an outage.",
		}),
	}
	if err := c.probe(ctx); err != nil {
		client.Close()
		return nil, fmt.Errorf("cluster.etcd: cannot reach etcd at %s within %s: %v; check cluster.etcd.endpoints, that a quorum of members is up, and its TLS and credentials",
			strings.Join(cfg.Endpoints, ", "), cfg.DialTimeout, err)
	}
	c.connected.Set(1)
	c.up.Store(true)
	if reg != nil {
		if err := reg.Register(c.connected); err != nil {
			client.Close()
			return nil, err
		}
	}
	return c, nil
}

func clientTLS(cfg Config) (*tls.Config, error) {
	https := false
	for _, ep := range cfg.Endpoints {
		https = https || strings.HasPrefix(ep, "https://")
	}
	if !https && cfg.CAFile == "" && cfg.CertFile == "" {
		return nil, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("cluster.etcd.tls.ca_file: %w", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("cluster.etcd.tls.ca_file: %s holds no PEM certificate", cfg.CAFile)
		}
	}
	if cfg.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("cluster.etcd.tls: cert_file and key_file: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}

// probe is a linearizable read of the prefix key: it succeeds only with a quorum.
func (c *Cluster) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	_, err := c.client.Get(ctx, c.prefix, clientv3.WithCountOnly())
	return err
}

// Prefix is where egressd's keys live.
func (c *Cluster) Prefix() string { return c.prefix }

// OnReconnect registers f, called when etcd answers again after an outage: the
// caches read afresh, since a watch that resumes may have missed a compacted
// revision.
func (c *Cluster) OnReconnect(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onReconnect = append(c.onReconnect, f)
}

// Run reads etcd's health every HealthInterval until ctx ends: the connected gauge,
// a warning when an outage begins and a note when it ends, and the caches resynced
// then.
func (c *Cluster) Run(ctx context.Context) {
	t := time.NewTicker(c.interval)
	defer t.Stop()
	var downSince time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := c.probe(ctx)
		if ctx.Err() != nil {
			return
		}
		switch {
		case err != nil && downSince.IsZero():
			downSince = time.Now()
			c.connected.Set(0)
			c.up.Store(false)
			c.log.Warn("etcd is unreachable: enforcing the policy in force and serving cached state; writes fail with 503 until it is back",
				"error", err.Error())
		case err == nil && !downSince.IsZero():
			c.log.Info("etcd is reachable again; resyncing the caches", "outage", time.Since(downSince).Round(time.Millisecond).String())
			downSince = time.Time{}
			c.connected.Set(1)
			c.up.Store(true)
			c.mu.Lock()
			hooks := append([]func(){}, c.onReconnect...)
			c.mu.Unlock()
			for _, f := range hooks {
				f()
			}
		}
	}
}

// Connected says whether etcd answered the last health read.
func (c *Cluster) Connected() bool { return c.up.Load() }

// Close closes the connection.
func (c *Cluster) Close() error { return c.client.Close() }

// request is the context of one request: DialTimeout at most.
func (c *Cluster) request(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.timeout)
}
