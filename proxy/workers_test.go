package proxy

import (
	"net"
	"testing"
)

// mustWait fails t unless cond comes true within waitFor's 2 s.
func mustWait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !waitFor(cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

// blockingWorkers returns workers whose jobs say on ran that they run, then wait
// for release, and a job to start.
func blockingWorkers(t *testing.T) (w *workers, j job, ran, release chan struct{}) {
	ran, release = make(chan struct{}, 16), make(chan struct{})
	w = newWorkers(func(job) { ran <- struct{}{}; <-release })
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return w, job{conn: a}, ran, release
}

// A job goes to a worker that is waiting, and a new worker starts only when none is.
func TestWorkersReuseWaitingWorkers(t *testing.T) {
	w, j, ran, release := blockingWorkers(t)

	w.start(j)
	w.start(j)
	<-ran
	<-ran
	if got := w.live.Load(); got != 2 {
		t.Fatalf("two jobs at once: %d workers, want 2", got)
	}
	release <- struct{}{}
	release <- struct{}{}
	mustWait(t, "both workers to wait", func() bool { return w.idle.Load() == 2 })

	for range 5 { // one after the other: all on the waiting workers
		w.start(j)
		<-ran
		release <- struct{}{}
		mustWait(t, "the worker to wait again", func() bool { return w.idle.Load() == 2 })
	}
	if got := w.live.Load(); got != 2 {
		t.Fatalf("after five jobs one at a time: %d workers, want the 2 that were waiting", got)
	}
}

// retire ends the waiting workers; a worker busy with a job is not touched.
func TestWorkersRetire(t *testing.T) {
	w, j, ran, release := blockingWorkers(t)
	for range 9 {
		w.start(j)
	}
	for range 9 {
		<-ran
	}
	for range 8 { // one stays busy
		release <- struct{}{}
	}
	mustWait(t, "eight workers to wait", func() bool { return w.idle.Load() == 8 })
	w.retire()
	mustWait(t, "the waiting workers to exit", func() bool { return w.live.Load() == 1 })
	if got := w.idle.Load(); got != 0 {
		t.Fatalf("after retire: %d waiting, want 0", got)
	}
	release <- struct{}{}
	mustWait(t, "the busy worker to wait", func() bool { return w.idle.Load() == 1 })
	w.retire()
	mustWait(t, "the last worker to exit", func() bool { return w.live.Load() == 0 })
}
