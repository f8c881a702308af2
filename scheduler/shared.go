package scheduler

import (
	"context"
	"fmt"
	"time"
)

// Shared is where a scheduler in cluster mode keeps its schedules (etcd, through
// cluster.Schedules), and what decides which replica invokes: the leader, chosen by
// an election, claiming each run before it invokes it.
type Shared interface {
	// Fetch reads the definitions afresh, with the revision to write on.
	Fetch(ctx context.Context) (Definitions, int64, error)
	// Store writes d if the definitions are still at rev; false if another
	// replica wrote first.
	Store(ctx context.Context, d Definitions, rev int64) (bool, error)
	// Cached is the definitions as this replica last saw them.
	Cached() Definitions
	// States is each schedule's last recorded state, as this replica last saw it.
	States() map[string]State
	// Record writes a schedule's state after a run.
	Record(ctx context.Context, id string, st State) error
	// Claim claims the run of id scheduled at: true for one caller only, across
	// replicas and leaders, and only while this replica leads.
	Claim(ctx context.Context, id string, at time.Time) (bool, error)
	// LastClaim is the time of the latest claimed run of id; zero if none.
	LastClaim(ctx context.Context, id string) (time.Time, error)
	// Leading says whether this replica leads, with a margin: false before its
	// lease can have expired on etcd's side.
	Leading() bool
}

// catchUpWindow is how late a run may still be invoked by a new leader: a run
// whose time passed less than this before it took over.
const catchUpWindow = 30 * time.Second

// maxCatchUp bounds the runs counted as missed per schedule at a takeover.
const maxCatchUp = 100000

// Refresh installs the definitions this replica last saw: the cluster calls it
// after each change its watch brings.
func (s *Scheduler) Refresh() {
	d := s.shared.Cached()
	s.mu.Lock()
	s.installLocked(d)
	s.mu.Unlock()
}

// Lead is called when this replica becomes the leader: runs whose time passed less
// than catchUpWindow ago and that no leader claimed are invoked now, once; older
// unclaimed ones are counted as missed and skipped. Undeployed functions' schedules
// are deleted.
func (s *Scheduler) Lead(ctx context.Context) {
	s.removeUndeployed()
	now := s.opts.Clock.Now().UTC()
	s.mu.Lock()
	entries := make([]*entry, 0, len(s.entries))
	for _, e := range s.entries {
		entries = append(entries, e)
	}
	s.mu.Unlock()
	for _, e := range entries {
		last, err := s.shared.LastClaim(ctx, e.ID)
		if err != nil {
			s.log.Warn("schedule catch-up: the last claimed run could not be read; none is replayed", "id", e.ID, "error", err)
			continue
		}
		if last.IsZero() {
			last = e.Created
		}
		var recent time.Time
		missed := 0
		for t, n := e.spec.Next(last), 0; !t.IsZero() && !t.After(now) && n < maxCatchUp; t, n = e.spec.Next(t), n+1 {
			if now.Sub(t) < catchUpWindow {
				recent = t
			} else {
				missed++
			}
		}
		if missed > 0 {
			s.metrics.missed.WithLabelValues(e.Function).Add(float64(missed))
			s.log.Warn("scheduled runs missed while no replica led; skipped", "id", e.ID, "function", e.Function, "missed", missed)
		}
		if !recent.IsZero() {
			s.log.Info("schedule caught up at takeover", "id", e.ID, "scheduled", recent, "late", now.Sub(recent).String())
			s.runClaimed(e, recent)
		}
	}
}

// runClaimed claims e's run at and, if this replica got it, invokes it in the
// background.
func (s *Scheduler) runClaimed(e *entry, at time.Time) {
	if !s.start(e) {
		s.skip(e, at)
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(s.runs, 5*time.Second)
		ok, err := s.shared.Claim(ctx, e.ID, at)
		cancel()
		if err != nil || !ok {
			if err != nil {
				s.log.Warn("scheduled run not claimed; not invoked here", "id", e.ID, "scheduled", at, "error", err)
			}
			e.running.Store(false)
			s.inflight.Done()
			return
		}
		s.invoke(e, at)
	}()
}

// recordShared writes e's state after a run, in cluster mode.
func (s *Scheduler) recordShared(id string, st State) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.shared.Record(ctx, id, st); err != nil {
		s.log.Error("schedule state not recorded in etcd", "id", id, "error", fmt.Sprint(err))
	}
}
