package proxy

import (
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"time"
)

// A tunnel's setup runs deep: reading the first request with net/http's parser, the
// policy, net's dial chain. A new goroutine starts with a small stack, so a goroutine
// per connection grew its stack, copying it, for every tunnel (perf, go tool pprof:
// runtime.newstack under net.sysSocket; 5% of egressd's CPU per new tunnel with the
// end of the tunnel, which a poller's goroutine now does). workers keeps the
// goroutines that did it: the next connection goes to one that is waiting, its stack
// already grown, and only when none is waiting does a new one start. Idle workers are
// retired every few seconds, so a burst's workers do not stay.
type workers struct {
	// jobs is unbuffered: a send succeeds only to a worker waiting in receive. A
	// zero job asks the worker that takes it to exit.
	jobs chan job
	run  func(job)
	idle atomic.Int64 // workers waiting in receive
	live atomic.Int64 // workers running or waiting
}

// job is a connection to read the first request of: a net.Conn, or a bare socket
// (see socket_linux.go) with its peer's address and the poller that waits for it
// and moves its tunnel.
type job struct {
	conn net.Conn
	sock *socket
	peer netip.AddrPort
	pl   *poller
	slot *connSlot
	h    *handoff
}

// close closes j's connection.
func (j job) close() {
	if j.sock != nil {
		j.sock.close()
		return
	}
	j.conn.Close()
}

// writer writes a whole answer to j's connection; on a socket, for up to timeout.
func (j job) writer(timeout time.Duration) io.Writer {
	if j.sock != nil {
		return socketWriter{j.pl, j.sock, timeout}
	}
	return j.conn
}

// socketWriter writes a whole answer to a client's socket, or fails after
// timeout.
type socketWriter struct {
	pl      *poller
	s       *socket
	timeout time.Duration
}

func (w socketWriter) Write(b []byte) (int, error) { return w.pl.writeAll(w.s, b, w.timeout) }

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
func (p *Proxy) runJob(j job) { p.firstRequest(j) }

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
