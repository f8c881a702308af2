package proxy

import (
	"net"
	"sync/atomic"
)

// Two steps of a tunnel run deep: its setup (reading the first request with
// net/http's parser, the policy, net's dial chain) and its end (the access log line
// through slog's JSON handler). A new goroutine starts with a small stack, so a
// goroutine per connection grew its stack, copying it, at both steps: about 8% of
// egressd's CPU per new tunnel (perf; go tool pprof: runtime.newstack under
// net.sysSocket and slog's handler). workers keeps the goroutines that did that work:
// the next job goes to one that is waiting, its stack already grown, and only when
// none is waiting does a new one start. The copiers, which wait on the tunnel's
// sockets for its whole life, stay goroutines of their own with small stacks: an idle
// tunnel holds no grown stack. Idle workers are retired every few seconds, so a
// burst's workers do not stay.
type workers struct {
	// jobs is unbuffered: a send succeeds only to a worker waiting in receive. A
	// zero job asks the worker that takes it to exit.
	jobs chan job
	run  func(job)
	idle atomic.Int64 // workers waiting in receive
	live atomic.Int64 // workers running or waiting
}

// job is a connection to read the first request of (conn, slot, h), or a tunnel
// that has ended (ended).
type job struct {
	conn  net.Conn
	slot  *connSlot
	h     *handoff
	ended *tunnel
}

func newWorkers(run func(job)) *workers { return &workers{jobs: make(chan job), run: run} }

// start runs j on a waiting worker, or on a new one.
func (w *workers) start(j job) {
	select {
	case w.jobs <- j:
	default:
		w.live.Add(1)
		go w.work(j)
	}
}

// work is a worker's goroutine: it runs jobs until it is retired.
func (w *workers) work(j job) {
	defer w.live.Add(-1)
	for j != (job{}) {
		w.run(j)
		w.idle.Add(1)
		j = <-w.jobs
		w.idle.Add(-1)
	}
}

// runJob is the proxy's workers' run.
func (p *Proxy) runJob(j job) {
	if j.conn != nil {
		p.firstRequest(j.conn, j.slot, j.h)
	} else {
		p.endTunnel(j.ended)
	}
}

// retire asks every waiting worker to exit. Called every few seconds, it lets the
// pool that a burst grew go with it; under a steady load it costs a goroutine start
// per worker per call.
func (w *workers) retire() {
	for n := w.idle.Load(); n > 0; n-- {
		select {
		case w.jobs <- job{}:
		default:
			return
		}
	}
}
