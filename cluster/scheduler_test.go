package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/egressd/egressd/internal/etcdtest"
	"github.com/egressd/egressd/scheduler"
)

// manualClock is the schedulers' time, moved by the test; leases run on real time.
type manualClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}
func (c *manualClock) set(t time.Time) { c.mu.Lock(); c.now = t; c.mu.Unlock() }
func (*manualClock) After(time.Duration) (<-chan time.Time, func()) {
	return nil, func() {}
}

// runs counts invocations by schedule and scheduled time, across replicas.
type runs struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *runs) Invoke(_ context.Context, _ string, _ []byte, h http.Header) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n[h.Get("X-Egressd-Schedule-Id")+"@"+h.Get("X-Egressd-Scheduled-Time")]++
	return 200, nil
}

func (r *runs) count(id string, at time.Time) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[id+"@"+at.UTC().Format(time.RFC3339)]
}

func (r *runs) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := 0
	for _, n := range r.n {
		t += n
	}
	return t
}

type schedReplica struct {
	c      *Cluster
	shared *Schedules
	s      *scheduler.Scheduler
	reg    *prometheus.Registry
	stop   context.CancelFunc
	done   chan struct{}
}

func startSchedReplica(t testing.TB, endpoint string, i int, clock *manualClock, inv *runs) *schedReplica {
	return startSchedReplicaOpt(t, endpoint, i, clock, inv, true)
}

// startSchedReplicaOpt is startSchedReplica; campaign false is scheduler.enabled: false.
func startSchedReplicaOpt(t testing.TB, endpoint string, i int, clock *manualClock, inv *runs, campaign bool) *schedReplica {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	c, err := Connect(ctx, Config{Endpoints: []string{endpoint}, Prefix: "/test/", DialTimeout: time.Second, HealthInterval: 100 * time.Millisecond}, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	shared, err := NewSchedules(ctx, c, 2*time.Second, fmt.Sprintf("replica-%d", i))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	s, err := scheduler.New(scheduler.Options{Shared: shared, Clock: clock, Invoker: inv, MaxSchedules: 2, Logger: log, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	s.SetFunctions([]scheduler.Function{{Name: "f", URL: "http://127.0.0.1:1/", State: scheduler.StateProductive}})
	r := &schedReplica{c: c, shared: shared, s: s, reg: reg, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		shared.Run(ctx, campaign, s.Refresh, func() { s.Lead(ctx) })
	}()
	t.Cleanup(func() { cancel(); <-r.done; c.Close() })
	return r
}

// leader waits up to d for exactly one of replicas to lead, and returns it.
func leader(t testing.TB, replicas []*schedReplica, d time.Duration) (*schedReplica, time.Duration) {
	t.Helper()
	start := time.Now()
	for time.Since(start) < d {
		var leaders []*schedReplica
		for _, r := range replicas {
			if r.shared.Leading() {
				leaders = append(leaders, r)
			}
		}
		if len(leaders) > 1 {
			t.Fatalf("%d replicas lead at once", len(leaders))
		}
		if len(leaders) == 1 {
			return leaders[0], time.Since(start)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no replica led within %s", d)
	return nil, 0
}

// tick moves the clock to at and lets every live replica run what is due.
func tick(clock *manualClock, at time.Time, replicas []*schedReplica) {
	clock.set(at)
	for _, r := range replicas {
		r.s.RunDue(at)
	}
	for _, r := range replicas {
		r.s.Wait()
	}
}

func TestSchedulerOnEtcd(t *testing.T) {
	etcd := etcdtest.Start(t)
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	clock := &manualClock{now: t0}
	inv := &runs{n: map[string]int{}}
	var replicas []*schedReplica
	for i := range 3 {
		replicas = append(replicas, startSchedReplica(t, etcd.Endpoint, i, clock, inv))
	}
	first, _ := leader(t, replicas, 5*time.Second)

	sc, err := replicas[2].s.Create("f", "* * * * *", []byte(`{"n":1}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range replicas {
		for i := 0; len(r.s.List()) != 1; i++ {
			if i == 200 {
				t.Fatalf("the schedule never reached a replica")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// The limit (2 here) holds across replicas: two creating the last one at once,
	// exactly one succeeds.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	ids := make([]string, 2)
	for i, r := range replicas[:2] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var s scheduler.Schedule
			s, errs[i] = r.s.Create("f", "0 0 1 1 *", nil)
			ids[i] = s.ID
		}()
	}
	wg.Wait()
	if (errs[0] == nil) == (errs[1] == nil) || !errors.Is(errors.Join(errs...), scheduler.ErrLimit) {
		t.Fatalf("two replicas creating the last schedule: %v, %v; want one success and one ErrLimit", errs[0], errs[1])
	}
	for i, err := range errs {
		if err == nil {
			if err := replicas[2].s.Delete(ids[i]); err != nil {
				t.Fatal(err)
			}
		}
	}

	// Five minutes: each run once, by the leader.
	for m := 1; m <= 5; m++ {
		at := t0.Add(time.Duration(m) * time.Minute)
		tick(clock, at, replicas)
		if n := inv.count(sc.ID, at); n != 1 {
			t.Fatalf("the run at %s was invoked %d times; want once", at, n)
		}
	}
	// The state is shared: a replica that did not run it lists the last run.
	var other *schedReplica
	for _, r := range replicas {
		if r != first {
			other = r
		}
	}
	for i := 0; ; i++ {
		l := other.s.List()
		if len(l) == 1 && l[0].State.LastRun != nil && l[0].State.LastOutcome == "success" {
			break
		}
		if i == 200 {
			t.Fatalf("a non-leader never listed the last run: %+v", l)
		}
		time.Sleep(5 * time.Millisecond)
	}

	// The leader dies without resigning (its connection cut, as by kill -9). The
	// run due meanwhile is invoked by the next leader when it takes over, once.
	first.c.Close()
	crashed := time.Now()
	at := t0.Add(6 * time.Minute)
	var live []*schedReplica
	for _, r := range replicas {
		if r != first {
			live = append(live, r)
		}
	}
	tick(clock, at, live)
	second, _ := leader(t, live, 5*time.Second)
	failover := time.Since(crashed)
	t.Logf("failover: a new leader %s after the old one's connection was cut (session_ttl 2s)", failover.Round(time.Millisecond))
	if failover > 3*time.Second {
		t.Errorf("failover took %s; want within session_ttl + 1s", failover)
	}
	for i := 0; inv.count(sc.ID, at) == 0 && i < 400; i++ {
		time.Sleep(5 * time.Millisecond)
	}
	second.s.Wait()
	if n := inv.count(sc.ID, at); n != 1 {
		t.Errorf("the run due during the failover was invoked %d times; want once", n)
	}

	// The second leader dies too, and five minutes pass before the third takes
	// over: the run less than 30s old is invoked, the four older are missed.
	second.c.Close()
	var third *schedReplica
	for _, r := range live {
		if r != second {
			third = r
		}
	}
	late := t0.Add(11 * time.Minute)
	clock.set(late.Add(10 * time.Second))
	leader(t, []*schedReplica{third}, 5*time.Second)
	for i := 0; inv.count(sc.ID, late) == 0 && i < 400; i++ {
		time.Sleep(5 * time.Millisecond)
	}
	third.s.Wait()
	if n := inv.count(sc.ID, late); n != 1 {
		t.Errorf("the run 10s before the takeover was invoked %d times; want once", n)
	}
	for m := 7; m <= 10; m++ {
		if n := inv.count(sc.ID, t0.Add(time.Duration(m)*time.Minute)); n != 0 {
			t.Errorf("a run older than 30s at the takeover was invoked %d times", n)
		}
	}
	if v := missed(t, third.reg); v != 4 {
		t.Errorf("egressd_schedule_missed_total = %v; want 4", v)
	}
	if got := inv.total(); got != 7 {
		t.Errorf("%d invocations in all; want 7 (5 + 1 + 1)", got)
	}

	// etcd down: changes fail (503 through the API), listing goes on from the cache.
	etcd.Stop()
	if _, err := third.s.Create("f", "0 0 1 1 *", nil); !errors.Is(err, scheduler.ErrNotSaved) && !errors.Is(err, scheduler.ErrUnconfirmed) {
		t.Errorf("create with etcd down: %v; want ErrNotSaved or ErrUnconfirmed", err)
	}
	if err := third.s.Delete(sc.ID); !errors.Is(err, scheduler.ErrNotSaved) && !errors.Is(err, scheduler.ErrUnconfirmed) {
		t.Errorf("delete with etcd down: %v", err)
	}
	if l := third.s.List(); len(l) != 1 {
		t.Errorf("list with etcd down: %d schedules; want the one", len(l))
	}
}

// missed is egressd_schedule_missed_total in reg, over every function.
func missed(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() == "egressd_schedule_missed_total" {
			for _, m := range mf.Metric {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}
