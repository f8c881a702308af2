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
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/egressd/egressd/admin"
	"github.com/egressd/egressd/diag"
	"github.com/egressd/egressd/dialer"
	"github.com/egressd/egressd/dnsserver"
	"github.com/egressd/egressd/guard"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/reload"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/proxy"
	"github.com/egressd/egressd/resolver"
	"github.com/egressd/egressd/scheduler"
	"github.com/egressd/egressd/secrets"
)

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c, fsys, code, ok := configCommand("serve", "Run the proxy, the metrics listener and the allowlist watcher until SIGTERM or SIGINT",
		"egressd: not started: the configuration has errors (run 'egressd check' after fixing them)", args, stderr)
	if !ok {
		return code
	}
	logOut := newBatchWriter(stderr)
	defer logOut.Close()
	log := newLogger(c, logOut)
	if err := serve(ctx, c, fsys, log); err != nil {
		log.Error("egressd stopped", "error", err)
		return exitFail
	}
	return exitOK
}

// serve runs egressd on c until ctx is done, then shuts down gracefully.
func serve(ctx context.Context, c *config.Config, fsys policy.FS, log *slog.Logger) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	res, err := newResolver(c, &resolver.Options{Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	// One dialer for the proxy, trace and the DNS listener: they agree on what is
	// reachable. Its exemptions are the IP and CIDR rules of the policy in force.
	var p *proxy.Proxy
	dial := dialer.New(dialer.Options{
		Resolver: res,
		Guard:    guard.New(allowPrivate(c)),
		Exempt:   liveExemption(func() *policy.Matcher { return p.Policy() }),
		Timeout:  c.Proxy.DialTimeout,
	})
	// A secrets file that does not open (wrong key, tampered, truncated) stops egressd
	// here, before any listener, and is left as it is.
	store, runtimeAPI, err := openSecrets(c, log, reg)
	if err != nil {
		return err
	}
	sched, err := openScheduler(c, log, reg)
	if err != nil {
		return err
	}
	denials := diag.NewDenials(c.Admin.DenialTargets)
	p, err = proxy.New(proxy.Options{
		Denials:                denials,
		LocalHandler:           runtimeAPI,
		Dialer:                 dial,
		Report:                 c.Mode == config.ModeReport,
		IdleTimeout:            c.Proxy.IdleTimeout,
		ReadHeaderTimeout:      c.Proxy.ReadHeaderTimeout,
		MaxHeaderBytes:         c.Proxy.MaxHeaderBytes,
		MaxResponseHeaderBytes: c.Proxy.MaxResponseHeaderBytes,
		ResponseHeaderTimeout:  c.Proxy.ResponseHeaderTimeout,
		MaxConnections:         c.Proxy.MaxConnections,
		HalfCloseTimeout:       c.Proxy.HalfCloseTimeout,
		CloseRevokedTunnels:    *c.Proxy.CloseRevokedTunnels,
		Logger:                 log,
		Registerer:             reg,
	})
	if err != nil {
		return err
	}
	reloader, err := reload.New(reload.Options{
		FS:         fsys,
		Paths:      c.Allowlist,
		Policy:     policyOptions(c),
		Apply:      p.SetPolicy,
		Logger:     log,
		Registerer: reg,
	})
	if err != nil {
		return err
	}
	if err := reloader.Load(); err != nil {
		return errors.New("the allowlist has errors; nothing was started (run 'egressd check' for the list)")
	}

	// Without a token file there is no admin API; with an unreadable one, no egressd.
	adminToken := ""
	if c.Admin.TokenFile != "" {
		if adminToken, err = admin.ReadToken(c.Admin.TokenFile); err != nil {
			return err
		}
	}

	proxyLn, err := proxy.Listen(c.Proxy.Listen)
	if err != nil {
		return fmt.Errorf("proxy listener: %w", err)
	}
	metricsLn, err := net.Listen("tcp", c.Metrics.Listen)
	if err != nil {
		proxyLn.Close()
		return fmt.Errorf("metrics listener: %w", err)
	}
	p.ProtectListener(metricsLn.Addr())
	var dnsSrv *dnsserver.Server
	dnsAddr := ""
	if c.DNS.Listen != "" {
		pc, ln, err := dnsserver.Listen(c.DNS.Listen)
		if err != nil {
			proxyLn.Close()
			metricsLn.Close()
			return fmt.Errorf("dns listener: %w", err)
		}
		dnsSrv, err = dnsserver.New(dnsserver.Options{
			Policy: p, Resolver: res, Guard: dial,
			NXDomain: c.DNS.Refuse == "nxdomain", Logger: log, Registerer: reg,
		})
		if err != nil {
			return err
		}
		p.ProtectListener(ln.Addr())
		dnsAddr = pc.LocalAddr().String()
		go func() {
			if err := dnsSrv.Serve(pc, ln); err != nil {
				log.Error("dns listener stopped", "error", err)
			}
		}()
	}
	var adminSrv *http.Server
	adminAddr := ""
	if adminToken != "" {
		tracer := &diag.Tracer{
			Policy: p.Policy,
			Dial:   dial.DialContext,
		}
		h, err := adminHandler(adminToken, tracer, denials, reloader, p)
		if err != nil {
			return err
		}
		if store != nil {
			secrets.AdminRoutes(store, h.Handle)
		}
		if sched != nil {
			scheduler.AdminRoutes(sched, h.Handle)
		}
		ln, err := net.Listen("tcp", c.Admin.Listen)
		if err != nil {
			return fmt.Errorf("admin listener: %w", err)
		}
		p.ProtectListener(ln.Addr())
		adminAddr = ln.Addr().String()
		adminSrv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
		go func() {
			if err := ignoreClosed(adminSrv.Serve(ln)); err != nil {
				log.Error("admin listener stopped", "error", err)
			}
		}()
	}
	metricsSrv := &http.Server{
		Handler:           metricsMux(reg, p),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}

	errc := make(chan error, 3)
	go func() { errc <- ignoreClosed(p.Serve(proxyLn)) }()
	go func() { errc <- ignoreClosed(metricsSrv.Serve(metricsLn)) }()

	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	if _, onDisk := fsys.(policy.OSFiles); onDisk {
		go func() {
			if err := reloader.Watch(watchCtx); err != nil {
				log.Error("allowlist watcher stopped; edits need SIGHUP", "error", err)
			}
		}()
	}
	schedDone := make(chan struct{})
	if sched != nil {
		go func() {
			runScheduler(watchCtx, sched, c.Scheduler.FunctionsFile, log)
			close(schedDone)
		}()
	} else {
		close(schedDone)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	log.Info("egressd started", "version", versionString(), "mode", string(c.Mode), "dns", res.Upstreams(),
		"proxy", proxyLn.Addr().String(), "metrics", metricsLn.Addr().String(), "dns_listener", dnsAddr, "admin", adminAddr, "config", c.File)

	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-hup:
			log.Info("reload requested", "signal", "SIGHUP")
			_ = reloader.Load()
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
			if sched != nil {
				log.Warn("scheduled runs still going at the end of the drain time; canceled")
				sched.CancelRuns()
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
