// Package reload keeps the policy in force in step with the allowlist files.
//
// It loads the allowlist, hands each successfully compiled Matcher to a callback
// (the proxy's SetPolicy), and watches the files with fsnotify so that an edit is in
// force within a second. It watches directories, not files, so that every way a file
// changes is seen: written in place, replaced by rename, deleted and recreated, added
// to or removed from a directory, and the Kubernetes ConfigMap "..data" symlink swap.
// A load that fails leaves the last good policy in force.
package reload

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"

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
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	targets := newTargets(r.opts.Paths)
	targets.sync(w, r.log)

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if targets.relevant(ev.Name) {
				timer.Reset(r.opts.Debounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			r.log.Warn("file watch error", "error", err)
		case <-timer.C:
			// A directory may have been recreated or a path may have appeared: watch
			// what exists now before reading, so no later edit is missed.
			targets.sync(w, r.log)
			_ = r.Load()
		}
	}
}

// targets knows which directories to watch and which events in them matter.
type targets struct {
	dirs  map[string]bool            // configured directories: every event inside matters
	files map[string]map[string]bool // parent directory -> base names that matter
}

func newTargets(paths []string) *targets {
	t := &targets{dirs: map[string]bool{}, files: map[string]map[string]bool{}}
	for _, p := range paths {
		p = filepath.Clean(p)
		parent, base := filepath.Dir(p), filepath.Base(p)
		if t.files[parent] == nil {
			t.files[parent] = map[string]bool{}
		}
		// The path itself may be a file or a directory, and may change from one to the
		// other; its parent sees it created, removed and renamed either way.
		t.files[parent][base] = true
		t.dirs[p] = true
	}
	return t
}

// sync adds a watch on every configured path that is a directory now, and on every
// parent directory. Adding a watch twice is harmless.
func (t *targets) sync(w *fsnotify.Watcher, log *slog.Logger) {
	for parent := range t.files {
		if err := w.Add(parent); err != nil {
			log.Warn("cannot watch directory", "dir", parent, "error", err)
		}
	}
	for d := range t.dirs {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			if err := w.Add(d); err != nil {
				log.Warn("cannot watch directory", "dir", d, "error", err)
			}
		}
	}
}

// relevant reports whether an event on name may change the allowlist: anything in a
// configured directory, the configured names in a parent directory, and Kubernetes'
// "..data" entries, whose swap changes what every file link points to.
func (t *targets) relevant(name string) bool {
	dir, base := filepath.Dir(name), filepath.Base(name)
	if t.dirs[dir] {
		return true
	}
	if names := t.files[dir]; names != nil {
		return names[base] || strings.HasPrefix(base, "..")
	}
	return false
}
