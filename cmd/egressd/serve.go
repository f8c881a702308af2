package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/egressd/egressd/admin"
	"github.com/egressd/egressd/console"
	"github.com/egressd/egressd/diag"
	"github.com/egressd/egressd/dnsserver"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/reload"
	"github.com/egressd/egressd/internal/watch"
	"github.com/egressd/egressd/originate"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/proxy"
	"github.com/egressd/egressd/scheduler"
	"github.com/egressd/egressd/secrets"
)

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c, fsys, code, ok := configCommand("serve", "Run the proxy, the metrics listener and the allowlist watcher until SIGTERM or SIGINT",
		"egressd: not started: the configuration has errors (run 'egressd check' after fixing them)", args, stderr)
	if !ok {
		return code
	}
	if c.Processors > 0 {
		runtime.GOMAXPROCS(c.Processors)
	}
	if c.GCPercent > 0 {
		debug.SetGCPercent(c.GCPercent)
	}
	logOut := newBatchWriter(stderr)
	defer logOut.Close()
	log := newLogger(c, logOut)
	if c.Builtin {
		log.Info("no --config given: running on the built-in configuration", "config", c.File)
	}
	a, err := newApp(c, fsys, log, true)
	if err != nil {
		log.Error("egressd not started", "error", err)
		return exitFail
	}
	if err := a.serve(ctx); err != nil {
		log.Error("egressd stopped", "error", err)
		return exitFail
	}
	return exitOK
}

// listeners are the app's sockets; close closes every one opened.
type listeners struct {
	proxy, metrics, admin, transparent, transparent6 net.Listener
	dnsUDP                                           net.PacketConn
	dnsTCP                                           net.Listener
}

func (l *listeners) close() {
	for _, c := range []io.Closer{l.proxy, l.metrics, l.admin, l.transparent, l.transparent6, l.dnsUDP, l.dnsTCP} {
		if c != nil {
			c.Close()
		}
	}
}

// listen opens the app's listeners; on an error it closes those it opened.
func (a *app) listen() (*listeners, error) {
	l := &listeners{}
	if err := a.open(l); err != nil {
		l.close()
		return nil, err
	}
	return l, nil
}

// open fills l with the app's listeners, stopping at the first that fails.
func (a *app) open(l *listeners) (err error) {
	c := a.c
	if l.proxy, err = proxy.Listen(c.Proxy.Listen); err != nil {
		return fmt.Errorf("proxy listener: %w", err)
	}
	if l.metrics, err = net.Listen("tcp", c.Metrics.Listen); err != nil {
		return fmt.Errorf("metrics listener: %w", err)
	}
	if c.Proxy.TransparentListen != "" {
		if l.transparent, err = proxy.ListenTransparent(c.Proxy.TransparentListen); err != nil {
			return fmt.Errorf("transparent listener: %w", err)
		}
		// The rules redirect IPv6 to ::1 on the same port: listen there too when the
		// listener is on IPv4 loopback and the namespace has IPv6.
		if host, port, _ := net.SplitHostPort(c.Proxy.TransparentListen); host == "127.0.0.1" {
			if l.transparent6, err = proxy.ListenTransparent(net.JoinHostPort("::1", port)); err != nil {
				a.log.Info("no IPv6 transparent listener; intercepted IPv6 connections are refused", "error", err.Error())
				l.transparent6, err = nil, nil
			}
		}
	}
	if c.DNS.Listen != "" {
		if l.dnsUDP, l.dnsTCP, err = dnsserver.Listen(c.DNS.Listen); err != nil {
			return fmt.Errorf("dns listener: %w", err)
		}
	}
	if a.adminToken != "" {
		if l.admin, err = net.Listen("tcp", c.Admin.Listen); err != nil {
			return fmt.Errorf("admin listener: %w", err)
		}
	}
	return nil
}

// serve runs the app until ctx is done, then shuts down gracefully.
func (a *app) serve(ctx context.Context) error {
	c, log, p := a.c, a.log, a.proxy
	l, err := a.listen()
	if err != nil {
		return err
	}
	defer l.close()
	// Nothing is ever proxied to egressd's own listeners.
	for _, ln := range []net.Listener{l.metrics, l.admin, l.dnsTCP} {
		if ln != nil {
			p.ProtectListener(ln.Addr())
		}
	}
	if a.store != nil {
		a.store.RemoveStale()
	}
	if a.sched != nil {
		a.sched.RemoveStale()
	}

	var dnsSrv *dnsserver.Server
	dnsAddr := ""
	if l.dnsUDP != nil {
		dnsSrv, err = dnsserver.New(dnsserver.Options{
			Policy: p, Resolver: a.res, Guard: a.dial,
			NXDomain: c.DNS.Refuse == "nxdomain", Logger: log, Registerer: a.reg,
		})
		if err != nil {
			return err
		}
		dnsAddr = l.dnsUDP.LocalAddr().String()
		go func() {
			if err := dnsSrv.Serve(l.dnsUDP, l.dnsTCP); err != nil {
				log.Error("dns listener stopped", "error", err)
			}
		}()
	}
	var adminSrv *http.Server
	adminAddr := ""
	if l.admin != nil {
		tracer := &diag.Tracer{Policy: p.Policy, Dial: a.dial.DialContext}
		h, err := adminHandler(a.adminToken, tracer, a.denials, a.reloader, p)
		if err != nil {
			return err
		}
		if a.store != nil {
			secrets.AdminRoutes(a.store, h.Handle)
		}
		if a.managed != nil {
			allowlistRoutes(h, a.managed, a.reloader, p)
		} else {
			h.Handle("/v1/allowlist", managedOff())
			h.Handle("/v1/allowlist/", managedOff())
		}
		if a.sched != nil {
			scheduler.AdminRoutes(a.sched, h.Handle)
		} else {
			h.Handle("/v1/schedules", schedulerOff(c))
			h.Handle("/v1/schedules/", schedulerOff(c))
		}
		adminAddr = l.admin.Addr().String()
		secure := c.Admin.TLSCertFile != ""
		web, err := console.New(console.Options{Token: a.adminToken, API: h, SessionTTL: c.Admin.SessionTTL, Secure: secure,
			Version: versionString(), Logger: log, Status: a.consoleStatus})
		if err != nil {
			return err
		}
		go web.Run(ctx)
		// The JSON API under /v1/ with its bearer token; the console everywhere else.
		root := http.NewServeMux()
		root.Handle("/v1/", h)
		root.Handle("/", web)
		adminSrv = &http.Server{Handler: root, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
		go func() {
			serve := func() error { return adminSrv.Serve(l.admin) }
			if secure {
				serve = func() error { return adminSrv.ServeTLS(l.admin, c.Admin.TLSCertFile, c.Admin.TLSKeyFile) }
			}
			if err := ignoreClosed(serve()); err != nil {
				log.Error("admin listener stopped", "error", err)
			}
		}()
	}
	metricsSrv := &http.Server{
		Handler:           metricsMux(a.reg, p),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}

	errc := make(chan error, 5)
	go func() { errc <- ignoreClosed(p.Serve(l.proxy)) }()
	transparentAddr := ""
	if l.transparent != nil {
		transparentAddr = l.transparent.Addr().String()
		go func() { errc <- p.ServeTransparent(l.transparent) }()
		if l.transparent6 != nil {
			go func() { errc <- p.ServeTransparent(l.transparent6) }()
		}
	}
	go func() { errc <- ignoreClosed(metricsSrv.Serve(l.metrics)) }()

	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	if _, onDisk := a.fsys.(policy.OSFiles); onDisk {
		go func() {
			if err := a.reloader.Watch(watchCtx); err != nil {
				log.Error("allowlist watcher stopped; edits need SIGHUP", "error", err)
			}
		}()
	}
	if !c.Builtin {
		go func() {
			if err := watch.Paths(watchCtx, []string{c.File}, reload.DefaultDebounce, log, a.reloadUpstreams); err != nil {
				log.Error("config file watcher stopped; upstreams edits need a restart", "error", err)
			}
		}()
	}
	if a.cluster != nil {
		defer a.cluster.Close()
		go a.cluster.Run(watchCtx)
		go a.clusterAL.Run(watchCtx, func() { _ = a.reloader.Load() })
		if a.clusterSecrets != nil {
			go a.clusterSecrets.Run(watchCtx, a.store.Refresh)
		}
		if a.clusterSchedules != nil {
			go a.clusterSchedules.Run(watchCtx, *c.Scheduler.Enabled, a.sched.Refresh, func() { a.sched.Lead(watchCtx) })
		}
	}
	schedDone := make(chan struct{})
	if a.sched != nil {
		go func() {
			runScheduler(watchCtx, a.sched, c.Scheduler.FunctionsFile, log)
			close(schedDone)
		}()
	} else {
		close(schedDone)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	// Startup is over: what it alone used goes back to the system.
	returnMemory()
	log.Info("egressd started", "version", versionString(), "mode", string(c.Mode), "dns", a.res.Upstreams(),
		"proxy", l.proxy.Addr().String(), "metrics", l.metrics.Addr().String(), "dns_listener", dnsAddr, "admin", adminAddr, "transparent", transparentAddr, "config", c.File)

	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-hup:
			log.Info("reload requested", "signal", "SIGHUP")
			_ = a.reloader.Load()
		case runErr = <-errc:
			if runErr != nil {
				break loop
			}
		}
	}

	log.Info("shutting down", "drain", c.Proxy.DrainTimeout.String())
	stopWatch() // no more reloads, and the scheduler starts no run
	drainCtx, cancel := context.WithTimeout(context.Background(), c.Proxy.DrainTimeout)
	defer cancel()
	// The proxy stops accepting at once and drains, while scheduled runs in flight
	// finish beside it; whatever is left when the drain time is up is ended.
	var drained sync.WaitGroup
	drained.Add(2)
	go func() {
		defer drained.Done()
		if err := p.Shutdown(drainCtx); err != nil {
			log.Warn("proxy shutdown", "error", err)
		}
	}()
	go func() {
		defer drained.Done()
		select {
		case <-schedDone:
		case <-drainCtx.Done():
			if a.sched != nil {
				log.Warn("scheduled runs still going at the end of the drain time; canceled")
				a.sched.CancelRuns()
			}
			<-schedDone
		}
	}()
	drained.Wait()
	_ = metricsSrv.Shutdown(drainCtx)
	if adminSrv != nil {
		_ = adminSrv.Shutdown(drainCtx)
	}
	if dnsSrv != nil {
		_ = dnsSrv.Shutdown(drainCtx)
	}
	log.Info("egressd stopped")
	return runErr
}

// consoleStatus is what the console's overview shows of this egressd.
func (a *app) consoleStatus() console.Status {
	ps := a.proxy.Stats()
	st := console.Status{Mode: string(a.c.Mode), Allowed: ps.Allowed, Denied: ps.Denied, TunnelsOpen: ps.TunnelsOpen}
	if a.cluster != nil {
		st.Cluster, st.ClusterConnected = true, a.cluster.Connected()
	}
	switch {
	case a.sched == nil:
	case a.clusterSchedules == nil:
		st.Scheduler = "this egressd (single-node)"
	case a.clusterSchedules.Leading():
		st.Scheduler = "this replica leads and invokes"
	case *a.c.Scheduler.Enabled:
		st.Scheduler = "another replica leads; this one stands by"
	default:
		st.Scheduler = "another replica leads; this one is out of the election (scheduler.enabled: false)"
	}
	return st
}

// reloadUpstreams applies the upstreams section of the config file as it is now. A
// config that does not load leaves the entries in force; other keys take effect at
// the next start.
func (a *app) reloadUpstreams() {
	nc, err := config.LoadFile(a.c.File)
	if err != nil {
		a.log.Error("config file not reloaded; the upstreams in force stay", "error", err.Error())
		return
	}
	t, errs := originate.Compile(nc.UpstreamSpecs())
	if len(errs) > 0 {
		a.log.Error("config file not reloaded; the upstreams in force stay", "error", errs[0].Error())
		return
	}
	a.proxy.SetUpstreams(t)
	a.log.Info("upstreams reloaded (other config changes take effect at the next start)", "entries", len(t.Entries()))
}

// managedOff answers the managed-allowlist endpoints of an egressd with no place to
// keep managed rules.
func managedOff() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		admin.WriteError(w, http.StatusNotFound, "this egressd keeps no managed rules: set managed_allowlist.file (or run in cluster mode)")
	})
}

// schedulerOff answers the schedule endpoints of an egressd that runs no scheduler,
// so that the CLI can say so instead of printing a bare 404.
func schedulerOff(c *config.Config) http.Handler {
	why := "this egressd runs no scheduler: scheduler.functions_file is not set"
	if !*c.Scheduler.Enabled {
		why = "this egressd runs no scheduler: scheduler.enabled is false (it runs on one replica only)"
	}
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		admin.WriteError(w, http.StatusNotFound, why)
	})
}

func ignoreClosed(err error) error {
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// metricsMux serves /metrics from reg, and the liveness and readiness probes.
func metricsMux(reg *prometheus.Registry, p *proxy.Proxy) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !p.Ready() {
			http.Error(w, "not ready: no policy loaded or the proxy listener is not up", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	return mux
}
