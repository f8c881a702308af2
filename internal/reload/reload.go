// Package reload keeps the policy in force in step with the allowlist files.
//
// It loads the allowlist, hands each successfully compiled Matcher to a callback
// (the proxy's SetPolicy), and reloads on every change that internal/watch sees, so
// that an edit is in force within a second. A load that fails leaves the last good
// policy in force.
//
// A reload never applies a file that is still being written. After a change it reads
// the files twice, Settle apart, and applies them only if both reads agree; and a file
// that looks half-written (emptied while its rules are in force, as "gen > file" does
// before it writes, or ending in the middle of a line) must stay unchanged for
// SuspectSettle before it is applied.
package reload

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"slices"
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
	// Managed, if set, returns the rules managed through the admin API, as an
	// allowlist file's text; they are compiled with the files' rules, under the name
	// policy.ManagedSource.
	Managed func() ([]byte, error)
	// WatchAlso are more files to watch (the managed rules' file).
	WatchAlso []string
	// Debounce coalesces bursts of file events. If zero, DefaultDebounce.
	Debounce time.Duration
	// Settle is the time between the two reads of a reload, which must agree. If
	// zero, 50ms.
	Settle time.Duration
	// SuspectSettle is how long a file that looks half-written must stay unchanged
	// before it is applied. If zero, 1s.
	SuspectSettle time.Duration
	Logger        *slog.Logger
	Registerer    prometheus.Registerer
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
	// Guarded by mu: the files of the policy in force, and when each suspect
	// content was first seen.
	inForce map[string][]byte
	suspect map[string]suspectSeen
	retry   *time.Timer
	stopped bool // Watch has returned: no more retries
}

type suspectSeen struct {
	sum   [32]byte
	since time.Time
}

// New returns a Reloader. It loads nothing yet.
func New(opts Options) (*Reloader, error) {
	if opts.Debounce == 0 {
		opts.Debounce = DefaultDebounce
	}
	if opts.Settle == 0 {
		opts.Settle = 50 * time.Millisecond
	}
	if opts.SuspectSettle == 0 {
		opts.SuspectSettle = time.Second
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

// Load loads the allowlist now, as it is: at startup, on SIGHUP. On success it
// applies the new policy; on failure it keeps the one in force, logs every problem,
// and returns them.
func (r *Reloader) Load() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	files, problems := r.read()
	return r.applyLocked(files, problems)
}

// read reads the allowlist files and the managed rules.
func (r *Reloader) read() ([]policy.File, policy.Problems) {
	files, problems := policy.ReadFiles(r.opts.FS, r.opts.Paths)
	if r.opts.Managed != nil {
		data, err := r.opts.Managed()
		if err != nil {
			problems = append(problems, policy.Problem{File: policy.ManagedSource, Msg: err.Error()})
		} else {
			files = append(files, policy.File{Name: policy.ManagedSource, Data: data})
		}
	}
	return files, problems
}

// reloadSettled is the reload after a change: it applies the files once two reads
// Settle apart agree and no file looks half-written, or tries again later.
func (r *Reloader) reloadSettled() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.retry != nil {
		r.retry.Stop()
		r.retry = nil
	}
	files, problems := r.read()
	for range 40 { // at most 40 settles (2s by default) of a file changing all along
		time.Sleep(r.opts.Settle)
		again, againProblems := r.read()
		if sameFiles(files, again) && againProblems.Error() == problems.Error() {
			if wait := r.suspectWaitLocked(again); wait > 0 {
				r.log.Info("allowlist file looks half-written; waiting for it to settle", "wait", wait)
				r.retryLater(wait)
				return
			}
			_ = r.applyLocked(again, againProblems)
			return
		}
		files, problems = again, againProblems
	}
	r.log.Warn("allowlist files still changing; the policy in force stays until they settle")
	r.retryLater(r.opts.Debounce)
}

func (r *Reloader) retryLater(d time.Duration) {
	if !r.stopped {
		r.retry = time.AfterFunc(d, r.reloadSettled)
	}
}

// suspectWaitLocked returns how much longer the files must stay as they are before
// they may be applied: a file emptied while its rules are in force, or one that ends
// in the middle of a line, must be SuspectSettle old.
func (r *Reloader) suspectWaitLocked(files []policy.File) time.Duration {
	now := time.Now()
	var wait time.Duration
	seen := map[string]suspectSeen{}
	for _, f := range files {
		old, inForce := r.inForce[f.Name]
		if f.Name == policy.ManagedSource || inForce && bytes.Equal(old, f.Data) {
			continue // managed rules change whole, never half-written
		}
		emptied := inForce && len(bytes.TrimSpace(old)) > 0 && len(bytes.TrimSpace(f.Data)) == 0
		partial := len(f.Data) > 0 && f.Data[len(f.Data)-1] != '\n'
		if !emptied && !partial {
			continue
		}
		sum := sha256.Sum256(f.Data)
		s, ok := r.suspect[f.Name]
		if !ok || s.sum != sum {
			s = suspectSeen{sum: sum, since: now}
		}
		seen[f.Name] = s
		if left := r.opts.SuspectSettle - now.Sub(s.since); left > wait {
			wait = left
		}
	}
	r.suspect = seen
	return wait
}

func sameFiles(a, b []policy.File) bool {
	return slices.EqualFunc(a, b, func(x, y policy.File) bool { return x.Name == y.Name && bytes.Equal(x.Data, y.Data) })
}

// applyLocked compiles files and applies the policy, or keeps the one in force.
func (r *Reloader) applyLocked(files []policy.File, readProblems policy.Problems) error {
	var (
		res policy.Result
		err error
	)
	if len(readProblems) > 0 {
		err = readProblems
	} else {
		res, err = policy.CompileFiles(files, r.opts.Paths, r.opts.Policy)
	}
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
	r.inForce = map[string][]byte{}
	for _, f := range files {
		r.inForce[f.Name] = f.Data
	}
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
	defer func() {
		r.mu.Lock()
		r.stopped = true
		if r.retry != nil {
			r.retry.Stop()
		}
		r.mu.Unlock()
	}()
	return watch.Paths(ctx, append(slices.Clone(r.opts.Paths), r.opts.WatchAlso...), r.opts.Debounce, r.log, r.reloadSettled)
}
