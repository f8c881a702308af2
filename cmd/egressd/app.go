package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/admin"
	"github.com/egressd/egressd/cluster"
	"github.com/egressd/egressd/diag"
	"github.com/egressd/egressd/dialer"
	"github.com/egressd/egressd/guard"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/reload"
	"github.com/egressd/egressd/internal/residency"
	"github.com/egressd/egressd/managed"
	"github.com/egressd/egressd/originate"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/proxy"
	"github.com/egressd/egressd/resolver"
	"github.com/egressd/egressd/scheduler"
	"github.com/egressd/egressd/secrets"
)

// app is egressd put together from its config, before any port is opened: every
// file read, every key checked, the policy loaded. serve runs it; check builds it and
// stops there, so that check fails exactly when serve would refuse to start (ports
// in use aside). Building it writes nothing.
type app struct {
	c    *config.Config
	fsys policy.FS // where the allowlist paths are read
	// writes is set for serve: it may create what the config says to create at
	// start (secrets.create_if_missing). check leaves it unset and writes nothing.
	writes     bool
	log        *slog.Logger
	reg        *prometheus.Registry
	res        *resolver.Resolver
	dial       *dialer.Dialer
	store      *secrets.Store // nil without secrets.file
	runtimeAPI http.Handler
	sched      *scheduler.Scheduler // nil without a scheduler
	denials    *diag.Denials
	proxy      *proxy.Proxy
	originator *originate.Originator
	reloader   *reload.Reloader
	managed    managed.Store      // nil: no managed rules (no managed_allowlist, no cluster)
	cluster    *cluster.Cluster   // nil: not in cluster mode, or check
	clusterAL  *cluster.Allowlist // the managed rules on etcd, in cluster mode
	// clusterSecrets is the secret store's records on etcd, in cluster mode with
	// secrets.key_file.
	clusterSecrets *cluster.Secrets
	// clusterSchedules is the schedules on etcd, in cluster mode with a functions file.
	clusterSchedules *cluster.Schedules
	adminToken       string // empty: no admin API
}

// newApp builds the app. Each step is a constructor; the first that fails ends it.
func newApp(c *config.Config, fsys policy.FS, log *slog.Logger, writes bool) (*app, error) {
	a := &app{c: c, fsys: fsys, log: log, reg: prometheus.NewRegistry(), writes: writes}
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var err error
	if a.res, err = newResolver(c, &resolver.Options{Logger: log, Registerer: a.reg}); err != nil {
		return nil, err
	}
	// One dialer for the proxy, trace and the DNS listener: they agree on what is
	// reachable. Its exemptions are the IP and CIDR rules of the policy in force.
	a.dial = dialer.New(dialer.Options{
		Resolver: a.res,
		Guard:    guard.New(allowPrivate(c)),
		Exempt:   liveExemption(func() *policy.Matcher { return a.proxy.Policy() }),
		Timeout:  c.Proxy.DialTimeout,
	})
	for _, step := range []func() error{a.joinCluster, a.openSecrets, a.openScheduler, a.newProxy, a.loadPolicy, a.readAdminToken} {
		if err := step(); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// openSecrets opens the store: a file that does not open (wrong key, tampered,
// truncated) stops egressd here, and is left as it is.
func (a *app) openSecrets() error {
	if a.c.Secrets.File != "" {
		if err := writableDir("secrets.file", a.c.Secrets.File); err != nil {
			return err
		}
	}
	var err error
	var remote secrets.Remote
	if a.clusterSecrets != nil {
		remote = a.clusterSecrets
	}
	a.store, a.runtimeAPI, err = openSecrets(a.c, a.log, a.reg, a.writes, a.reservedSecret, remote)
	return err
}

func (a *app) openScheduler() error {
	if *a.c.Scheduler.Enabled && a.c.Scheduler.StateFile != "" {
		if err := writableDir("scheduler.state_file", a.c.Scheduler.StateFile); err != nil {
			return err
		}
	}
	var err error
	var shared scheduler.Shared
	if a.clusterSchedules != nil {
		shared = a.clusterSchedules
	}
	a.sched, err = openScheduler(a.c, a.log, a.reg, shared)
	return err
}

func (a *app) newProxy() error {
	c := a.c
	a.denials = diag.NewDenials(c.Admin.DenialTargets)
	roots, err := upstreamRoots(c.Proxy.UpstreamCAFile)
	if err != nil {
		return err
	}
	var source originate.SecretSource
	if a.store != nil {
		source = a.store
	}
	a.originator = originate.New(source, roots, nil)
	var upstreamTLS *tls.Config
	if roots != nil {
		upstreamTLS = &tls.Config{RootCAs: roots}
	}
	a.proxy, err = proxy.New(proxy.Options{
		Originator:                   a.originator,
		UpstreamTLS:                  upstreamTLS,
		Denials:                      a.denials,
		LocalHandler:                 a.runtimeAPI,
		Dialer:                       a.dial,
		Report:                       c.Mode == config.ModeReport,
		IdleTimeout:                  c.Proxy.IdleTimeout,
		ReadHeaderTimeout:            c.Proxy.ReadHeaderTimeout,
		MaxHeaderBytes:               c.Proxy.MaxHeaderBytes,
		MaxResponseHeaderBytes:       c.Proxy.MaxResponseHeaderBytes,
		ResponseHeaderTimeout:        c.Proxy.ResponseHeaderTimeout,
		MaxConnections:               c.Proxy.MaxConnections,
		HalfCloseTimeout:             c.Proxy.HalfCloseTimeout,
		CloseRevokedTunnels:          *c.Proxy.CloseRevokedTunnels,
		TransparentVerifyDestination: c.Proxy.TransparentVerifyDestination,
		Logger:                       a.log,
		Registerer:                   a.reg,
		ReturnMemory:                 returnMemory,
	})
	if err != nil {
		return err
	}
	table, errs := originate.Compile(c.UpstreamSpecs())
	if len(errs) > 0 {
		return errs[0] // the config's validation has reported these with their lines
	}
	a.proxy.SetUpstreams(table)
	return a.originator.Register(a.reg, a.proxy.Upstreams)
}

// reservedSecret says why a secret is egressd's own, or "": every secret an
// upstreams entry in force reads (a client certificate, its key, a CA, an injected
// token) stays out of the functions' runtime API.
func (a *app) reservedSecret(key string) string {
	if a.proxy == nil {
		return ""
	}
	for _, e := range a.proxy.Upstreams().Entries() {
		if slices.Contains(e.SecretNames(), key) {
			return "used by the upstreams entry for " + e.Host
		}
	}
	return ""
}

// upstreamRoots is the system roots with proxy.upstream_ca_file's added, or nil (the
// system roots alone) without one.
func upstreamRoots(file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("proxy.upstream_ca_file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("proxy.upstream_ca_file: %s holds no PEM certificate", file)
	}
	return pool, nil
}

// clusterConfig is how to reach etcd, from the config's cluster.etcd section.
func clusterConfig(e config.Etcd) cluster.Config {
	return cluster.Config{
		Endpoints: e.Endpoints, Prefix: e.Prefix,
		CAFile: e.TLS.CAFile, CertFile: e.TLS.CertFile, KeyFile: e.TLS.KeyFile,
		Username: e.Username, PasswordFile: e.PasswordFile, DialTimeout: e.DialTimeout,
	}
}

// joinCluster connects to etcd in cluster mode (serve only: check reads no more
// than files), and reads the managed allowlist from there. etcd that does not
// answer stops egressd here, with its endpoints named.
func (a *app) joinCluster() error {
	e := a.c.Cluster.Etcd
	if !e.Enabled() || !a.writes {
		return nil
	}
	var err error
	a.cluster, err = cluster.Connect(context.Background(), clusterConfig(e), a.log, a.reg)
	if err != nil {
		return err
	}
	if a.clusterAL, err = cluster.NewAllowlist(context.Background(), a.cluster); err != nil {
		a.cluster.Close()
		return err
	}
	a.managed = a.clusterAL
	if a.c.SecretsShared() {
		if a.clusterSecrets, err = cluster.NewSecrets(context.Background(), a.cluster); err != nil {
			a.cluster.Close()
			return err
		}
	}
	if a.c.Scheduler.FunctionsFile != "" {
		host, _ := os.Hostname()
		name := fmt.Sprintf("%s/%d", host, os.Getpid())
		if a.clusterSchedules, err = cluster.NewSchedules(context.Background(), a.cluster, e.SessionTTL, name); err != nil {
			a.cluster.Close()
			return err
		}
	}
	return nil
}

func (a *app) loadPolicy() error {
	opts := reload.Options{
		FS:         a.fsys,
		Paths:      a.c.Allowlist,
		Policy:     policyOptions(a.c),
		Apply:      a.proxy.SetPolicy,
		Logger:     a.log,
		Registerer: a.reg,
	}
	if f := a.c.ManagedAllowlist.File; f != "" {
		if err := writableDir("managed_allowlist.file", f); err != nil {
			return err
		}
		file := managed.NewFile(f)
		a.managed = file
		opts.WatchAlso = []string{f}
	}
	if a.managed != nil {
		store := a.managed
		opts.Managed = func() ([]byte, error) {
			rules, err := store.List()
			return managed.Text(rules), err
		}
	}
	var err error
	a.reloader, err = reload.New(opts)
	if err != nil {
		return err
	}
	if err := a.reloader.Load(); err != nil {
		return errAllowlist{err}
	}
	return nil
}

// errAllowlist is a policy that does not load: its problems, each file:line.
type errAllowlist struct{ err error }

func (e errAllowlist) Error() string {
	return "the allowlist has errors; nothing was started:\n" + e.err.Error()
}

func (e errAllowlist) Unwrap() error { return e.err }

// readAdminToken: without a token file there is no admin API; with an unreadable
// or empty one, no egressd.
func (a *app) readAdminToken() error {
	if a.c.Admin.TokenFile == "" {
		return nil
	}
	var err error
	if a.adminToken, err = admin.ReadToken(a.c.Admin.TokenFile); err != nil {
		return err
	}
	if f := a.c.Admin.TLSCertFile; f != "" {
		if _, err := tls.LoadX509KeyPair(f, a.c.Admin.TLSKeyFile); err != nil {
			return fmt.Errorf("admin.tls_cert_file and admin.tls_key_file: %w", err)
		}
	}
	return nil
}

// writableDir checks that the directory of a file egressd writes is writable: the
// writes go through a temporary file beside it.
func writableDir(key, file string) error {
	dir := filepath.Dir(file)
	if err := unix.Access(dir, unix.W_OK); err != nil {
		return fmt.Errorf("%s: the directory %s is not writable (%v); egressd writes %s through a temporary file beside it",
			key, dir, err, filepath.Base(file))
	}
	return nil
}

// returnMemory gives the system back what startup, or a burst of connections, left
// and serving does not need: the free heap, and the pages of the executable it
// touched (residency.TrimExecutable; those in use come back at once, from the page
// cache).
func returnMemory() {
	debug.FreeOSMemory()
	residency.TrimExecutable()
}
