package main

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/reload"
	"github.com/egressd/egressd/internal/watch"
	"github.com/egressd/egressd/scheduler"
)

// openScheduler loads the functions file and the schedule state. With the scheduler
// disabled or no functions file, it returns nil. In cluster mode the schedules are
// on shared (etcd) and every replica with a functions file serves them, while only
// those with the scheduler enabled take part in the election; check, which dials
// nothing, passes no shared and gets a scheduler with no state.
func openScheduler(c *config.Config, log *slog.Logger, reg prometheus.Registerer, shared scheduler.Shared) (*scheduler.Scheduler, error) {
	cluster := c.Cluster.Etcd.Enabled()
	if c.Scheduler.FunctionsFile == "" || !*c.Scheduler.Enabled && !cluster {
		return nil, nil
	}
	opts := scheduler.Options{
		StateFile:     c.Scheduler.StateFile,
		MaxSchedules:  c.Scheduler.MaxSchedules,
		InvokeTimeout: c.Scheduler.InvokeTimeout,
		Logger:        log,
		Registerer:    reg,
	}
	if cluster {
		opts.StateFile, opts.Shared = "", shared
	}
	s, err := scheduler.New(opts)
	if err != nil {
		return nil, err
	}
	if err := s.ReloadFunctions(c.Scheduler.FunctionsFile); err != nil {
		return nil, err
	}
	return s, nil
}

// runScheduler runs s until ctx is done, and reloads the functions file on every
// change; a file that fails to load leaves the functions in force.
func runScheduler(ctx context.Context, s *scheduler.Scheduler, functionsFile string, log *slog.Logger) {
	go func() {
		err := watch.Paths(ctx, []string{functionsFile}, reload.DefaultDebounce, log, func() {
			if err := s.ReloadFunctions(functionsFile); err != nil {
				log.Error("functions file not reloaded; the functions in force stay", "error", err)
				return
			}
			log.Info("functions reloaded")
		})
		if err != nil {
			log.Error("functions file watcher stopped", "error", err)
		}
	}()
	s.Run(ctx)
}
