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
	LastRun      *time.Time `json:"last_run,omitempty"`      // when it started
	LastOutcome  string     `json:"last_outcome,omitempty"`  // success or failure
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
	Logger        *slog.Logger
	Registerer    prometheus.Registerer
}

// Scheduler holds the schedules and runs them.
type Scheduler struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics

	mu        sync.Mutex
	functions map[string]Function
	entries   map[string]*entry
	deleted   []DeletedSchedule // oldest first
	changed   chan struct{}     // wakes the loop when schedules change
	inflight  sync.WaitGroup
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
	s := &Scheduler{opts: opts, log: opts.Logger, entries: map[string]*entry{}, changed: make(chan struct{}, 1)}
	s.runs, s.cancelRuns = context.WithCancel(context.Background())
	var err error
	if s.metrics, err = newMetrics(opts.Registerer, s); err != nil {
		return nil, err
	}
	if err := s.loadState(); err != nil {
		return nil, err
	}
	return s, nil
}

// SetFunctions installs the functions file's content. Schedules of a function that is
// gone or no longer productive are deleted at once; each deletion is logged with the
// schedule's whole definition and kept in the state file's deleted list, so that
// Restore can bring it back after a redeploy.
func (s *Scheduler) SetFunctions(fns []Function) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.functions = map[string]Function{}
	for _, f := range fns {
		s.functions[f.Name] = f
	}
	now := s.opts.Clock.Now().UTC()
	var gone []string
	for id, e := range s.entries {
		f, ok := s.functions[e.Function]
		if ok && f.State == StateProductive {
			continue
		}
		reason := "function removed from the functions file"
		if ok {
			reason = "function is " + f.State
		}
		s.log.Warn("schedule deleted: its function is undeployed; egressd schedules restore "+id+" brings it back",
			"id", id, "function", e.Function, "cron", e.Cron, "payload", e.Payload, "reason", reason)
		s.deleted = append(s.deleted, DeletedSchedule{Schedule: e.Schedule, DeletedAt: now, Reason: reason})
		gone = append(gone, id)
	}
	if len(gone) == 0 {
		return
	}
	for _, id := range gone {
		s.removeLocked(id)
	}
	if n := len(s.deleted) - maxDeleted; n > 0 {
		s.deleted = append([]DeletedSchedule(nil), s.deleted[n:]...)
	}
	if err := s.saveLocked(); err != nil {
		// Nobody asked for this change, so nothing to refuse: the deletions stand in
		// memory and the log above has every definition.
		s.log.Error("scheduler state not saved after undeploying", "file", s.opts.StateFile, "error", err)
	}
	s.wake()
}

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
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.IndexFunc(s.deleted, func(d DeletedSchedule) bool { return d.ID == id })
	if i < 0 {
		return Schedule{}, fmt.Errorf("%w: %s is not among the deleted schedules (egressd schedules list --deleted)", ErrNotFound, id)
	}
	d := s.deleted[i]
	if _, ok := s.entries[id]; ok {
		return Schedule{}, fmt.Errorf("%w: schedule %s exists", ErrInvalid, id)
	}
	if err := s.checkFunctionLocked(d.Function); err != nil {
		return Schedule{}, err
	}
	spec, err := ParseCron(d.Cron, now)
	if err != nil {
		return Schedule{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	e := &entry{Schedule: d.Schedule, spec: spec}
	e.State = State{NextRun: spec.Next(now)}
	s.entries[id] = e
	s.deleted = slices.Delete(s.deleted, i, i+1)
	if err := s.saveLocked(); err != nil {
		delete(s.entries, id)
		s.deleted = slices.Insert(s.deleted, i, d)
		return Schedule{}, fmt.Errorf("%w: %v", ErrNotSaved, err)
	}
	s.metrics.schedules.Set(float64(len(s.entries)))
	s.wake()
	return e.Schedule, nil
}

// checkFunctionLocked says whether a schedule for function may be added now.
func (s *Scheduler) checkFunctionLocked(function string) error {
	f, ok := s.functions[function]
	switch {
	case !ok:
		return fmt.Errorf("%w: no function %q in the functions file", ErrInvalid, function)
	case f.State != StateProductive:
		return fmt.Errorf("%w: function %q is %s; only productive functions can be scheduled", ErrInvalid, function, f.State)
	case len(s.entries) >= s.opts.MaxSchedules:
		return fmt.Errorf("%w: there are %d schedules, the most allowed (scheduler.max_schedules); delete one first", ErrLimit, len(s.entries))
	}
	return nil
}

// Create adds a schedule for a productive function.
func (s *Scheduler) Create(function, expr string, payload []byte) (Schedule, error) {
	now := s.opts.Clock.Now().UTC()
	spec, err := ParseCron(expr, now)
	if err != nil {
		return Schedule{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := checkPayload(payload); err != nil {
		return Schedule{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkFunctionLocked(function); err != nil {
		return Schedule{}, err
	}
	if len(payload) == 0 {
		payload = []byte("{}")
	}
	e := &entry{Schedule: Schedule{ID: newID(), Function: function, Cron: expr, Payload: string(payload), Created: now}, spec: spec}
	e.State.NextRun = spec.Next(now)
	s.entries[e.ID] = e
	// Saved before it is answered: a schedule that is not on disk is not created.
	if err := s.saveLocked(); err != nil {
		delete(s.entries, e.ID)
		return Schedule{}, fmt.Errorf("%w: %v", ErrNotSaved, err)
	}
	s.metrics.schedules.Set(float64(len(s.entries)))
	s.wake()
	return e.Schedule, nil
}

// Delete removes a schedule, durably, or not at all.
func (s *Scheduler) Delete(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[id]
	if !ok {
		return ErrNotFound
	}
	delete(s.entries, id)
	if err := s.saveLocked(); err != nil {
		s.entries[id] = e
		return fmt.Errorf("%w: %v", ErrNotSaved, err)
	}
	s.removeLocked(id)
	s.wake()
	return nil
}

func (s *Scheduler) removeLocked(id string) {
	delete(s.entries, id)
	s.metrics.forget(id)
	s.metrics.schedules.Set(float64(len(s.entries)))
}

// List returns every schedule with its state, oldest first.
func (s *Scheduler) List() []Schedule {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Schedule, 0, len(s.entries))
	for _, e := range s.entries {
		out = append(out, e.Schedule)
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
	for i, e := range due {
		if !s.start(e) {
			s.metrics.invocations.WithLabelValues(e.Function, "skipped").Inc()
			s.log.Warn("schedule skipped: the previous run is still going", "id", e.ID, "function", e.Function, "scheduled", at[i])
			continue
		}
		go s.invoke(e, at[i])
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
		f := s.functions[e.Function]
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
	if _, still := s.entries[e.ID]; still {
		s.metrics.lastRun.WithLabelValues(e.ID).Set(float64(start.UnixNano()) / 1e9)
		s.metrics.lastSuccess.WithLabelValues(e.ID).Set(b2f(err == nil))
		s.saveStateLocked()
	}
	s.mu.Unlock()
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

// stateFile is the state file's content.
type stateFile struct {
	Schedules []Schedule        `json:"schedules"`
	Deleted   []DeletedSchedule `json:"deleted,omitempty"` // undeployed with their function
}

// loadState reads the state file. Next runs are computed afresh from now.
func (s *Scheduler) loadState() error {
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
	var st stateFile
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

// saveLocked writes the state file durably (atomicfile.Write).
func (s *Scheduler) saveLocked() error {
	if s.opts.StateFile == "" {
		return nil
	}
	st := stateFile{Schedules: []Schedule{}, Deleted: s.deleted}
	for _, e := range s.entries {
		st.Schedules = append(st.Schedules, e.Schedule)
	}
	sort.Slice(st.Schedules, func(i, j int) bool { return st.Schedules[i].ID < st.Schedules[j].ID })
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(s.opts.StateFile, data)
}

// saveStateLocked saves what no client waits for (the outcome of a run): a failure
// is logged, the state in memory stays.
func (s *Scheduler) saveStateLocked() {
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
