// Package scheduler invokes functions on cron schedules, under the platform's limits:
// always UTC, at most once a minute, a bounded number of schedules, a bounded JSON
// payload, productive functions only.
//
// It uses github.com/robfig/cron/v3 to parse expressions and compute the next run, and
// runs schedules itself, on an injected Clock, so that tests run hours in
// milliseconds. A run still going when the next one is due makes that one skip; a
// panic in an invocation is recovered and recorded as a failure. Schedules and their
// state survive restarts in a state file; runs missed while egressd was down are not
// replayed.
package scheduler

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egressd/egressd/internal/defaults"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/robfig/cron/v3"

	"github.com/egressd/egressd/internal/atomicfile"
)

// Errors the API maps to status codes.
var (
	ErrNotFound = errors.New("no such schedule")
	ErrInvalid  = errors.New("invalid schedule")
	ErrLimit    = errors.New("schedule limit reached")
	// ErrNotSaved is a change that could not be made durable; it was not made.
	ErrNotSaved = errors.New("the schedule state could not be saved; nothing was changed")
	// ErrUnconfirmed is a change sent to etcd that etcd did not confirm: it was not
	// acknowledged, and may still be applied once etcd has a quorum again.
	ErrUnconfirmed = errors.New("the schedule change was not confirmed")
)

// DeletedSchedule is a schedule deleted because its function was undeployed, kept
// (the newest maxDeleted of them) so that it can be restored.
type DeletedSchedule struct {
	Schedule
	DeletedAt time.Time `json:"deleted_at"`
	Reason    string    `json:"reason"`
}

// maxDeleted bounds the deleted schedules kept for restoring.
const maxDeleted = 50

// Schedule is one schedule with its state. Times are UTC.
type Schedule struct {
	ID       string    `json:"id"`
	Function string    `json:"function"`
	Cron     string    `json:"cron"`
	Payload  string    `json:"payload"` // JSON text, kept byte for byte as given
	Created  time.Time `json:"created"`
	State    State     `json:"state"`
}

// State is how the last invocation went and when the next is due.
type State struct {
	LastRun     *time.Time `json:"last_run,omitempty"`     // when it started
	LastOutcome string     `json:"last_outcome,omitempty"` // success or failure
	// LastSkipped is the latest scheduled time skipped because a run was still
	// going: after LastRun, the schedule's last slot did not run.
	LastSkipped  *time.Time `json:"last_skipped,omitempty"`
	LastStatus   int        `json:"last_status,omitempty"`   // the function's HTTP status
	LastError    string     `json:"last_error,omitempty"`    // why it failed, if it did
	LastDuration float64    `json:"last_duration,omitempty"` // seconds
	NextRun      time.Time  `json:"next_run"`
}

// Clock is the scheduler's time: Now, and a timer.
type Clock interface {
	Now() time.Time
	// After returns a channel that receives once d has passed, and a stop function.
	After(d time.Duration) (<-chan time.Time, func())
}

// Invoker calls a function; the HTTP invoker is the real one.
type Invoker interface {
	Invoke(ctx context.Context, url string, payload []byte, header http.Header) (status int, err error)
}

// Options configure a Scheduler.
type Options struct {
	// StateFile keeps schedules and their state across restarts. If empty, nothing is kept.
	StateFile string
	// MaxSchedules bounds the schedules in total. If zero, 10.
	MaxSchedules int
	// InvokeTimeout bounds an invocation. If zero, 30s.
	InvokeTimeout time.Duration
	Clock         Clock   // if nil, the real clock
	Invoker       Invoker // if nil, HTTP POST
	// Shared, if set, keeps the schedules in etcd (cluster mode) instead of
	// StateFile, and decides which replica invokes.
	Shared     Shared
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Scheduler holds the schedules and runs them.
type Scheduler struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics

	mu sync.Mutex
	// functions is the functions file's content, under fnMu (not mu: a change's
	// checks read it with or without mu held).
	fnMu      sync.RWMutex
	functions map[string]Function
	entries   map[string]*entry
	deleted   []DeletedSchedule // oldest first
	changed   chan struct{}     // wakes the loop when schedules change
	inflight  sync.WaitGroup
	shared    Shared // nil: a state file, one replica
	// runs is the parent of every invocation's context; CancelRuns ends them.
	runs       context.Context
	cancelRuns context.CancelFunc
}

type entry struct {
	Schedule
	spec    cron.Schedule
	running atomic.Bool
}

// New loads the state file and returns a Scheduler; it starts nothing.
func New(opts Options) (*Scheduler, error) {
	if opts.MaxSchedules == 0 {
		opts.MaxSchedules = defaults.MaxSchedules
	}
	if opts.InvokeTimeout == 0 {
		opts.InvokeTimeout = defaults.InvokeTimeout
	}
	if opts.Clock == nil {
		opts.Clock = realClock{}
	}
	if opts.Invoker == nil {
		opts.Invoker = HTTPInvoker{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	s := &Scheduler{opts: opts, log: opts.Logger, entries: map[string]*entry{}, changed: make(chan struct{}, 1), shared: opts.Shared}
	s.runs, s.cancelRuns = context.WithCancel(context.Background())
	var err error
	if s.metrics, err = newMetrics(opts.Registerer); err != nil {
		return nil, err
	}
	if err := s.loadState(); err != nil {
		return nil, err
	}
	return s, nil
}

// SetFunctions installs the functions file's content. Schedules of a function that is
// gone or no longer productive are deleted at once; each deletion is logged with the
// schedule's whole definition and kept in the deleted list, so that Restore can
// bring it back after a redeploy. In cluster mode only the leader deletes, once.
func (s *Scheduler) SetFunctions(fns []Function) {
	m := map[string]Function{}
	for _, f := range fns {
		m[f.Name] = f
	}
	s.fnMu.Lock()
	s.functions = m
	s.fnMu.Unlock()
	s.removeUndeployed()
}

// removeUndeployed deletes the schedules whose function is gone or not productive.
func (s *Scheduler) removeUndeployed() {
	if s.shared != nil && !s.shared.Leading() {
		return
	}
	now := s.opts.Clock.Now().UTC()
	var gone []DeletedSchedule
	change := func(d *Definitions) error {
		gone = gone[:0]
		kept := d.Schedules[:0:0]
		for _, sc := range d.Schedules {
			f, ok := s.function(sc.Function)
			if ok && f.State == StateProductive {
				kept = append(kept, sc)
				continue
			}
			reason := "function removed from the functions file"
			if ok {
				reason = "function is " + f.State
			}
			gone = append(gone, DeletedSchedule{Schedule: sc, DeletedAt: now, Reason: reason})
		}
		if len(gone) == 0 {
			return errNoChange
		}
		d.Schedules = kept
		d.Deleted = append(d.Deleted, gone...)
		if n := len(d.Deleted) - maxDeleted; n > 0 {
			d.Deleted = append([]DeletedSchedule(nil), d.Deleted[n:]...)
		}
		return nil
	}
	// Nobody asked for this change, so nothing to refuse: with a state file that
	// cannot be written the deletions stand in memory, and the log has every
	// definition.
	err := s.mutate(context.Background(), change, true)
	if errors.Is(err, errNoChange) {
		return
	}
	for _, d := range gone {
		s.log.Warn("schedule deleted: its function is undeployed; egressd schedules restore "+d.ID+" brings it back",
			"id", d.ID, "function", d.Function, "cron", d.Cron, "payload", d.Payload, "reason", d.Reason)
	}
	if err != nil {
		s.log.Error("scheduler state not saved after undeploying", "file", s.opts.StateFile, "error", err)
	}
}

// errNoChange is a change that leaves the definitions as they are.
var errNoChange = errors.New("no change")

// Deleted returns the schedules deleted with their functions, oldest first.
func (s *Scheduler) Deleted() []DeletedSchedule {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]DeletedSchedule{}, s.deleted...)
}

// Restore recreates a deleted schedule, with its ID, cron and payload, once its
// function is productive again.
func (s *Scheduler) Restore(id string) (Schedule, error) {
	now := s.opts.Clock.Now().UTC()
	var restored Schedule
	err := s.mutate(context.Background(), func(d *Definitions) error {
		i := slices.IndexFunc(d.Deleted, func(x DeletedSchedule) bool { return x.ID == id })
		if i < 0 {
			return fmt.Errorf("%w: %s is not among the deleted schedules (egressd schedules list --deleted)", ErrNotFound, id)
		}
		if slices.ContainsFunc(d.Schedules, func(x Schedule) bool { return x.ID == id }) {
			return fmt.Errorf("%w: schedule %s exists", ErrInvalid, id)
		}
		del := d.Deleted[i]
		if err := s.checkFunction(del.Function, len(d.Schedules)); err != nil {
			return err
		}
		spec, err := ParseCron(del.Cron, now)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		restored = del.Schedule
		restored.State = State{NextRun: spec.Next(now)}
		d.Schedules = append(d.Schedules, restored)
		d.Deleted = slices.Delete(d.Deleted, i, i+1)
		return nil
	}, false)
	return restored, err
}

func (s *Scheduler) function(name string) (Function, bool) {
	s.fnMu.RLock()
	defer s.fnMu.RUnlock()
	f, ok := s.functions[name]
	return f, ok
}

// Functions is the functions file's content, by name.
func (s *Scheduler) Functions() []Function {
	s.fnMu.RLock()
	defer s.fnMu.RUnlock()
	out := make([]Function, 0, len(s.functions))
	for _, f := range s.functions {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// MaxSchedules is the schedule limit.
func (s *Scheduler) MaxSchedules() int { return s.opts.MaxSchedules }

// Next returns the next n runs of expr from now, in UTC, or why expr is refused.
func (s *Scheduler) Next(expr string, n int) ([]time.Time, error) {
	now := s.opts.Clock.Now().UTC()
	spec, err := ParseCron(expr, now)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	out := make([]time.Time, 0, n)
	for t := spec.Next(now); !t.IsZero() && len(out) < n; t = spec.Next(t) {
		out = append(out, t.UTC())
	}
	return out, nil
}

// checkFunction says whether a schedule for function may be added to count others.
func (s *Scheduler) checkFunction(function string, count int) error {
	f, ok := s.function(function)
	switch {
	case !ok:
		return fmt.Errorf("%w: no function %q in the functions file", ErrInvalid, function)
	case f.State != StateProductive:
		return fmt.Errorf("%w: function %q is %s; only productive functions can be scheduled", ErrInvalid, function, f.State)
	case count >= s.opts.MaxSchedules:
		return fmt.Errorf("%w: there are %d schedules, the most allowed (scheduler.max_schedules); delete one first", ErrLimit, count)
	}
	return nil
}

// Create adds a schedule for a productive function. In cluster mode the limit holds
// across replicas: the check and the write are one transaction.
func (s *Scheduler) Create(function, expr string, payload []byte) (Schedule, error) {
	now := s.opts.Clock.Now().UTC()
	spec, err := ParseCron(expr, now)
	if err != nil {
		return Schedule{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := checkPayload(payload); err != nil {
		return Schedule{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if len(payload) == 0 {
		payload = []byte("{}")
	}
	sc := Schedule{ID: newID(), Function: function, Cron: expr, Payload: string(payload), Created: now, State: State{NextRun: spec.Next(now)}}
	// Saved before it is answered: a schedule that is not stored is not created.
	err = s.mutate(context.Background(), func(d *Definitions) error {
		if err := s.checkFunction(function, len(d.Schedules)); err != nil {
			return err
		}
		d.Schedules = append(d.Schedules, sc)
		return nil
	}, false)
	if err != nil {
		return Schedule{}, err
	}
	return sc, nil
}

// Delete removes a schedule, durably, or not at all.
func (s *Scheduler) Delete(id string) error {
	return s.mutate(context.Background(), func(d *Definitions) error {
		i := slices.IndexFunc(d.Schedules, func(x Schedule) bool { return x.ID == id })
		if i < 0 {
			return ErrNotFound
		}
		d.Schedules = slices.Delete(d.Schedules, i, i+1)
		return nil
	}, false)
}

// List returns every schedule with its state, oldest first.
func (s *Scheduler) List() []Schedule {
	s.mu.Lock()
	defer s.mu.Unlock()
	var states map[string]State
	if s.shared != nil {
		states = s.shared.States() // the leader's records: this replica may not have run any
	}
	out := make([]Schedule, 0, len(s.entries))
	for _, e := range s.entries {
		sc := e.Schedule
		if st, ok := states[e.ID]; ok && (sc.State.LastRun == nil || st.LastRun != nil && st.LastRun.After(*sc.State.LastRun)) {
			next := sc.State.NextRun
			sc.State, sc.State.NextRun = st, next
		}
		out = append(out, sc)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// RunNow invokes a schedule at once, outside its timetable, and waits for the result,
// which is recorded like a scheduled run's. A run already going makes it skip.
func (s *Scheduler) RunNow(id string) (Schedule, error) {
	s.mu.Lock()
	e, ok := s.entries[id]
	s.mu.Unlock()
	if !ok {
		return Schedule{}, ErrNotFound
	}
	if !s.start(e) {
		return Schedule{}, fmt.Errorf("%w: a run of %s is still going", ErrInvalid, id)
	}
	s.invoke(e, s.opts.Clock.Now().UTC())
	s.mu.Lock()
	defer s.mu.Unlock()
	return e.Schedule, nil
}

// RunDue starts every schedule whose next run is at or before now, and moves each
// one's next run past now: runs missed in between (egressd was stopped, the clock
// jumped) are not replayed. Invocations run in the background; Wait waits for them.
func (s *Scheduler) RunDue(now time.Time) {
	now = now.UTC()
	s.mu.Lock()
	var due []*entry
	var at []time.Time
	for _, e := range s.entries {
		if e.State.NextRun.IsZero() || e.State.NextRun.After(now) {
			continue
		}
		due, at = append(due, e), append(at, e.State.NextRun)
		e.State.NextRun = e.spec.Next(now)
	}
	if len(due) > 0 {
		s.saveStateLocked()
	}
	s.mu.Unlock()
	if s.shared != nil {
		// Only the leader invokes, each run once it has claimed it.
		if s.shared.Leading() {
			for i, e := range due {
				s.runClaimed(e, at[i])
			}
		}
		return
	}
	for i, e := range due {
		if !s.start(e) {
			s.skip(e, at[i])
			continue
		}
		go s.invoke(e, at[i])
	}
}

// skip records that e's run at was skipped: the previous run is still going.
func (s *Scheduler) skip(e *entry, at time.Time) {
	s.metrics.invocations.WithLabelValues(e.Function, "skipped").Inc()
	s.log.Warn("schedule skipped: the previous run is still going", "id", e.ID, "function", e.Function, "scheduled", at)
	s.mu.Lock()
	e.State.LastSkipped = &at
	st := e.State
	s.saveStateLocked()
	s.mu.Unlock()
	if s.shared != nil {
		s.recordShared(e.ID, st)
	}
}

// start claims e's run slot; false means a run is still going.
func (s *Scheduler) start(e *entry) bool {
	if !e.running.CompareAndSwap(false, true) {
		return false
	}
	s.inflight.Add(1)
	return true
}

// Wait blocks until every invocation in flight has finished.
func (s *Scheduler) Wait() { s.inflight.Wait() }

// invoke runs one invocation of e, scheduled for at, and records it. A panic is
// recovered and recorded as a failure, and the run slot is always released: a
// scheduler that stops after a panic is worse than one failed run.
func (s *Scheduler) invoke(e *entry, at time.Time) {
	start := s.opts.Clock.Now().UTC()
	status, err := 0, error(nil)
	func() {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("panic: %v", r)
			}
		}()
		s.mu.Lock()
		f, _ := s.function(e.Function)
		payload := e.Payload
		s.mu.Unlock()
		ctx, cancel := context.WithTimeout(s.runs, s.opts.InvokeTimeout)
		defer cancel()
		h := http.Header{}
		h.Set("Content-Type", "application/json")
		h.Set("X-Egressd-Schedule-Id", e.ID)
		h.Set("X-Egressd-Scheduled-Time", at.UTC().Format(time.RFC3339))
		status, err = s.opts.Invoker.Invoke(ctx, f.URL, []byte(payload), h)
		if err == nil && (status < 200 || status > 299) {
			err = fmt.Errorf("the function answered %d", status)
		}
	}()
	duration := s.opts.Clock.Now().Sub(start)

	s.mu.Lock()
	e.State.LastRun, e.State.LastStatus, e.State.LastDuration = &start, status, duration.Seconds()
	result := "success"
	e.State.LastOutcome, e.State.LastError = "success", ""
	if err != nil {
		result = "failure"
		e.State.LastOutcome, e.State.LastError = "failure", err.Error()
	}
	_, still := s.entries[e.ID]
	if still {
		s.metrics.lastRun.WithLabelValues(e.ID).Set(float64(start.UnixNano()) / 1e9)
		s.metrics.lastSuccess.WithLabelValues(e.ID).Set(b2f(err == nil))
		s.saveStateLocked()
	}
	st := e.State
	s.mu.Unlock()
	if still && s.shared != nil {
		s.recordShared(e.ID, st)
	}
	s.metrics.invocations.WithLabelValues(e.Function, result).Inc()
	s.log.Info("schedule ran", "id", e.ID, "function", e.Function, "scheduled", at, "outcome", result,
		"status", status, "error", errString(err), "duration_seconds", duration.Seconds())
	e.running.Store(false)
	s.inflight.Done()
}

// Run fires schedules on time until ctx is done, then waits for invocations in flight.
func (s *Scheduler) Run(ctx context.Context) {
	defer s.Wait()
	for {
		s.mu.Lock()
		var next time.Time
		for _, e := range s.entries {
			if next.IsZero() || e.State.NextRun.Before(next) {
				next = e.State.NextRun
			}
		}
		s.mu.Unlock()
		var fire <-chan time.Time
		stop := func() {}
		if !next.IsZero() {
			fire, stop = s.opts.Clock.After(next.Sub(s.opts.Clock.Now()))
		}
		select {
		case <-ctx.Done():
			stop()
			return
		case <-s.changed:
			stop()
		case now := <-fire:
			s.RunDue(now)
		}
	}
}

// RemoveStale removes what writes killed midway left beside the state file, so that
// a crash loop cannot fill the volume: egressd serve calls it at start (one scheduler
// runs on a state file, so no write of another is under way).
func (s *Scheduler) RemoveStale() {
	if s.opts.StateFile == "" {
		return
	}
	if n := atomicfile.RemoveStale(s.opts.StateFile); n > 0 {
		s.log.Info("removed temporary files of interrupted writes", "file", s.opts.StateFile, "removed", n)
	}
}

// CancelRuns ends the invocations in flight (they are recorded as failed) and every
// one started after: for a shutdown whose drain time has run out.
func (s *Scheduler) CancelRuns() { s.cancelRuns() }

func (s *Scheduler) wake() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Definitions are the schedules and the deleted list: the state file's content, and
// in cluster mode what etcd holds (each schedule's state apart).
type Definitions struct {
	Schedules []Schedule        `json:"schedules"`
	Deleted   []DeletedSchedule `json:"deleted,omitempty"` // undeployed with their function
}

// loadState reads the state file. Next runs are computed afresh from now.
func (s *Scheduler) loadState() error {
	if s.shared != nil {
		s.Refresh()
		return nil
	}
	if s.opts.StateFile == "" {
		return nil
	}
	data, err := os.ReadFile(s.opts.StateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("scheduler state: %w", err)
	}
	var st Definitions
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("scheduler state file %s: %w (the previous version is in .bak)", s.opts.StateFile, err)
	}
	now := s.opts.Clock.Now().UTC()
	for _, sc := range st.Schedules {
		spec, err := ParseCron(sc.Cron, now)
		if err != nil {
			s.log.Warn("schedule in the state file dropped", "id", sc.ID, "error", err)
			continue
		}
		e := &entry{Schedule: sc, spec: spec}
		e.State.NextRun = spec.Next(now)
		s.entries[sc.ID] = e
	}
	s.deleted = st.Deleted
	s.metrics.schedules.Set(float64(len(s.entries)))
	return nil
}

// definitionsLocked is the definitions as in memory.
func (s *Scheduler) definitionsLocked() Definitions {
	d := Definitions{Schedules: []Schedule{}, Deleted: slices.Clone(s.deleted)}
	for _, e := range s.entries {
		d.Schedules = append(d.Schedules, e.Schedule)
	}
	sort.Slice(d.Schedules, func(i, j int) bool { return d.Schedules[i].ID < d.Schedules[j].ID })
	return d
}

// saveLocked writes the state file durably (atomicfile.Write).
func (s *Scheduler) saveLocked() error {
	return s.writeFile(s.definitionsLocked())
}

func (s *Scheduler) writeFile(d Definitions) error {
	if s.opts.StateFile == "" {
		return nil
	}
	data, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(s.opts.StateFile, data)
}

// maxSharedAttempts bounds the retries of a change whose definitions another
// replica wrote between the read and the write: each round, one writer wins.
const maxSharedAttempts = 100

// mutate applies change to the definitions as stored and, once they are stored,
// to memory. With a state file: the definitions in memory, written durably. In
// cluster mode: the definitions in etcd, read afresh and written in a transaction
// on the revision read, retried when another replica wrote in between, so that
// checks such as the schedule limit hold across replicas. force installs the
// change in memory even when it could not be stored (state file only).
func (s *Scheduler) mutate(ctx context.Context, change func(*Definitions) error, force bool) error {
	if s.shared == nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		d := s.definitionsLocked()
		if err := change(&d); err != nil {
			return err
		}
		err := s.writeFile(d)
		if err != nil && !force {
			return fmt.Errorf("%w: %v", ErrNotSaved, err)
		}
		s.installLocked(d)
		return err
	}
	for range maxSharedAttempts {
		d, rev, err := s.shared.Fetch(ctx)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrNotSaved, err)
		}
		if err := change(&d); err != nil {
			return err
		}
		ok, err := s.shared.Store(ctx, d, rev)
		if err != nil {
			return fmt.Errorf("%w (etcd did not confirm it; it may still be applied once etcd recovers: list before retrying): %v", ErrUnconfirmed, err)
		}
		if ok {
			s.mu.Lock()
			s.installLocked(d)
			s.mu.Unlock()
			return nil
		}
		time.Sleep(time.Duration(mrand.Int64N(int64(2 * time.Millisecond))))
	}
	return fmt.Errorf("%w: the schedules are being changed by other replicas; try again", ErrNotSaved)
}

// installLocked makes d the schedules in memory: an entry still defined keeps its
// run slot and next run, a new one gets its next run from now, one gone is
// forgotten.
func (s *Scheduler) installLocked(d Definitions) {
	now := s.opts.Clock.Now().UTC()
	entries := make(map[string]*entry, len(d.Schedules))
	for _, sc := range d.Schedules {
		if e, ok := s.entries[sc.ID]; ok {
			entries[sc.ID] = e // a schedule's definition never changes under its ID
			continue
		}
		spec, err := ParseCron(sc.Cron, now)
		if err != nil {
			s.log.Warn("schedule dropped: its cron does not parse", "id", sc.ID, "error", err)
			continue
		}
		e := &entry{Schedule: sc, spec: spec}
		if e.State.NextRun.IsZero() || !e.State.NextRun.After(now) {
			e.State.NextRun = spec.Next(now)
		}
		entries[sc.ID] = e
	}
	for id := range s.entries {
		if _, ok := entries[id]; !ok {
			s.metrics.forget(id)
		}
	}
	s.entries, s.deleted = entries, d.Deleted
	s.metrics.schedules.Set(float64(len(s.entries)))
	s.wake()
}

// saveStateLocked saves what no client waits for (the outcome of a run): a failure
// is logged, the state in memory stays.
func (s *Scheduler) saveStateLocked() {
	if s.shared != nil {
		return // each run's state is recorded on its own (recordShared)
	}
	if err := s.saveLocked(); err != nil {
		s.log.Error("scheduler state not saved", "file", s.opts.StateFile, "error", err)
	}
}

func newID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// realClock is the wall clock.
type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) After(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTimer(d)
	return t.C, func() { t.Stop() }
}
