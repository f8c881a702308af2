// Package reload keeps the policy in force in step with the allowlist files.
//
// It loads the allowlist, hands each successfully compiled Matcher to a callback
// (the proxy's SetPolicy), and reloads on every change that internal/watch sees, so
// that an edit is in force within a second. A load that fails leaves the last good
// policy in force.
package reload

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/egressd/egressd/internal/watch"
	"github.com/egressd/egressd/policy"
)

// DefaultDebounce is how long the reloader waits after the last event of a burst.
const DefaultDebounce = 100 * time.Millisecond

// Options configure a Reloader.
type Options struct {
	FS     policy.FS             // where the allowlist is read; policy.OSFiles{} for real files
	Paths  []string              // allowlist files and directories
	Policy policy.Options        // what the matcher is compiled with
	Apply  func(*policy.Matcher) // installs a new policy; called once per successful load
	// Debounce coalesces bursts of file events. If zero, DefaultDebounce.
	Debounce   time.Duration
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Now is the clock for the reload timestamp. If nil, time.Now.
	Now func() time.Time
}

// Status is the outcome of the most recent load.
type Status struct {
	Time     time.Time
	OK       bool
	Rules    int             // rules in force
	Files    []string        // files of the policy in force
	Errors   policy.Problems // of the last load, when it failed
	Warnings policy.Problems // of the policy in force
}

// Reloader loads the allowlist and reloads it on change.
type Reloader struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics
	mu      sync.Mutex // serializes loads; the request path never takes it
	status  atomic.Pointer[Status]
}

// New returns a Reloader. It loads nothing yet.
func New(opts Options) (*Reloader, error) {
	if opts.Debounce == 0 {
		opts.Debounce = DefaultDebounce
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	return &Reloader{opts: opts, log: opts.Logger, metrics: m}, nil
}

// Status returns the outcome of the most recent load, or nil before the first.
func (r *Reloader) Status() *Status { return r.status.Load() }

// Load loads the allowlist now. On success it applies the new policy; on failure it
// keeps the one in force, logs every problem, and returns them.
func (r *Reloader) Load() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	res, err := policy.Load(r.opts.FS, r.opts.Paths, r.opts.Policy)
	now := r.opts.Now()
	r.metrics.lastTime.Set(float64(now.UnixNano()) / 1e9)
	if err != nil {
		var problems policy.Problems
		errors.As(err, &problems)
		for _, p := range problems {
			r.log.Error("allowlist error", "error", p.Error())
		}
		prev := r.status.Load()
		st := &Status{Time: now, Errors: problems}
		if prev != nil {
			st.Rules, st.Files, st.Warnings = prev.Rules, prev.Files, prev.Warnings
		}
		r.status.Store(st)
		r.metrics.reloads.WithLabelValues("failure").Inc()
		r.metrics.lastSuccess.Set(0)
		if prev != nil {
			r.log.Warn("policy reload failed; the last good policy stays in force", "errors", len(problems), "rules", prev.Rules)
		}
		return err
	}
	for _, w := range res.Warnings {
		r.log.Warn("allowlist warning", "warning", w.Error())
	}
	rules := len(res.Matcher.Rules())
	r.opts.Apply(res.Matcher)
	r.status.Store(&Status{Time: now, OK: true, Rules: rules, Files: res.Files, Warnings: res.Warnings})
	r.metrics.reloads.WithLabelValues("success").Inc()
	r.metrics.lastSuccess.Set(1)
	r.metrics.rules.Set(float64(rules))
	r.log.Info("policy loaded", "rules", rules, "files", len(res.Files), "warnings", len(res.Warnings))
	return nil
}

// Watch reloads after every change to the allowlist paths until ctx is done. It
// needs OS paths (policy.OSFiles).
func (r *Reloader) Watch(ctx context.Context) error {
	return watch.Paths(ctx, r.opts.Paths, r.opts.Debounce, r.log, func() { _ = r.Load() })
}
