package proxy

import (
	"bytes"
	"context"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A function's tunnel mostly carries a TLS handshake, a request and an answer, and
// then waits. With a goroutine per direction, each of those pieces cost a read that
// found nothing, a park and a wake-up through the runtime's poller, and every idle
// tunnel held two goroutines (their records stay with the runtime for good after a
// burst). A poller moves the bytes of such tunnels itself: an epoll instance of its
// own, edge-triggered, which the runtime's poller watches like any descriptor, so
// the loop goroutine sleeps in the runtime, not in a system call. When its socket is
// readable a direction is read once into the poller's buffer and written to the
// other side at once. When a destination cannot take all of a piece, or a read
// fills the buffer (a bulk transfer), the tunnel leaves the poller for a copier
// goroutine per direction: blocking writes and splice, with nothing of the poller.
//
// A polled tunnel's two sockets stay out of the runtime's poller altogether
// (socket_linux.go): a client whose first request is a CONNECT is accepted as a
// bare socket, the upstream is dialled as one, and a tunnel that starts from a
// net.Conn (a CONNECT after a plain request, or through goproxy) has each
// descriptor duplicated and its net.Conn closed (attach). The runtime keeps a
// record of about 550 bytes (its poll descriptor and the net.Conn's finalizer) for
// every descriptor it ever watched at once, for the life of the process: 5 000
// tunnels open together left 5.5 MB behind for good. A polled tunnel holds its two
// descriptors itself (socket), each with a count of the calls using it, so that a
// tunnel closed by a sweep, a revocation or a shutdown closes its descriptor only
// after the poller's read or write in progress: never a reused descriptor number
// under the poller. A tunnel that goes to copiers (the rare case of a bulk
// transfer) gives its descriptors to net.Conns again (polledEnds.copierConns); at
// the file limit, where net.FileConn cannot duplicate them, to *os.Files (no
// splice then).
//
// Events name a slot and its generation, never a pointer, so an event still queued
// for a direction that has gone is recognised and dropped.

// poller is one epoll instance and the goroutine that serves it.
type poller struct {
	epoll *os.File // non-blocking, so registered with the runtime's poller
	rc    syscall.RawConn
	buf   []byte // the loop's read buffer

	mu    sync.Mutex // slots and free; taken once per batch of events
	slots []pollSlot
	free  []int32
}

// pollSlot is what an event names: a direction, a wait (ready is closed), or a
// plain-HTTP client watched for its end (hup is called).
type pollSlot struct {
	d     *direction
	ready chan struct{}
	hup   func()
	gen   uint32
}

// direction is one way of a tunnel while a poller moves its bytes.
type direction struct {
	t        *tunnel
	pl       *poller
	src, dst *socket // dst is half-closed when src ends
	count    *atomic.Int64
	copier   func(*tunnel, []byte) // the goroutine that takes over
	slot     int32
	gen      uint32
	polled   atomic.Bool // the poller owns it; cleared once, by release
}

// polledEnds are a polled tunnel's two sockets, and, once the tunnel has gone to
// copiers, the net.Conns they move bytes through instead.
type polledEnds struct {
	client, upstream *socket

	mu     sync.Mutex
	conns  [2]net.Conn // client, upstream
	closed bool
}

// copierConns returns the connections of the tunnel's ends for a copier, making
// them the first time; an error once the tunnel is closed.
func (e *polledEnds) copierConns() (client, upstream net.Conn, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, nil, net.ErrClosed
	}
	if e.conns[0] != nil {
		return e.conns[0], e.conns[1], nil
	}
	// No direction is polled any more (toCopiers): the poller's descriptors go to
	// the copiers' connections.
	if client, err = e.client.netConn(nil, nil); err != nil {
		return nil, nil, err
	}
	if upstream, err = e.upstream.netConn(nil, nil); err != nil {
		client.Close()
		return nil, nil, err
	}
	e.conns = [2]net.Conn{client, upstream}
	return client, upstream, nil
}

// fileConn is a socket as an *os.File, where no duplicate of the descriptor can be
// had (socket.netConn). Its addresses are those known; nil for a tunnel's ends.
type fileConn struct {
	*os.File
	local, remote net.Addr
}

func (c fileConn) LocalAddr() net.Addr  { return c.local }
func (c fileConn) RemoteAddr() net.Addr { return c.remote }

// CloseWrite half-closes the socket, as TCPConn.CloseWrite does.
func (c fileConn) CloseWrite() error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.Shutdown(int(fd), unix.SHUT_WR) }); err != nil {
		return err
	}
	return os.NewSyscallError("shutdown", serr)
}

// close closes both ends: the sockets and any copier's connections.
func (e *polledEnds) close() {
	e.mu.Lock()
	e.closed = true
	conns := e.conns
	e.mu.Unlock()
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	e.client.close()
	e.upstream.close()
}

// quiet is quietFor of the client's socket.
func (e *polledEnds) quiet() (time.Duration, bool) {
	e.mu.Lock()
	c := e.conns[0]
	e.mu.Unlock()
	if c != nil {
		return quietFor(c)
	}
	return e.client.quiet()
}

// newPollers returns n pollers, or none where epoll cannot be had (the tunnels then
// use copier goroutines only).
func newPollers(n int) []*poller {
	var pls []*poller
	for range n {
		fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			break
		}
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
			break
		}
		f := os.NewFile(uintptr(fd), "epoll")
		rc, err := f.SyscallConn()
		if err != nil {
			f.Close()
			break
		}
		pls = append(pls, &poller{epoll: f, rc: rc, buf: make([]byte, smallSize)})
	}
	return pls
}

// attach gives t's two directions to pl, and t's two sockets to t.polled, their
// net.Conns closed. It reports false, having changed nothing, if either end is not
// a TCP connection or cannot be duplicated.
func (pl *poller) attach(t *tunnel) bool {
	client, ok := t.client.(*net.TCPConn)
	if !ok {
		return false
	}
	cs, err := detach(client)
	if err != nil {
		return false
	}
	us, err := detach(t.upstream)
	if err != nil {
		cs.close()
		return false
	}
	client.Close()
	t.upstream.Close()
	t.client, t.upstream = nil, nil
	pl.attachSockets(t, cs, us)
	return true
}

// attachSockets gives t's two directions to pl, and its two sockets to t.polled.
func (pl *poller) attachSockets(t *tunnel, cs, us *socket) {
	t.polled = &polledEnds{client: cs, upstream: us}
	t.dirs = [2]*direction{
		{t: t, pl: pl, src: cs, dst: us, count: &t.up, copier: copyClientToUpstream},
		{t: t, pl: pl, src: us, dst: cs, count: &t.down, copier: copyUpstreamToClient},
	}
	pl.mu.Lock()
	for _, d := range t.dirs {
		d.polled.Store(true)
		d.slot, d.gen = pl.takeSlot(pollSlot{d: d})
	}
	pl.mu.Unlock()
}

// takeSlot puts s in a free slot and returns the slot and its generation, which an
// event for it carries. pl.mu is held.
func (pl *poller) takeSlot(s pollSlot) (slot int32, gen uint32) {
	if n := len(pl.free); n > 0 {
		slot, pl.free = pl.free[n-1], pl.free[:n-1]
	} else {
		slot = int32(len(pl.slots))
		pl.slots = append(pl.slots, pollSlot{})
	}
	s.gen = pl.slots[slot].gen
	pl.slots[slot] = s
	return slot, s.gen
}

// freeSlot empties slot; events still queued for it are dropped. pl.mu is held.
func (pl *poller) freeSlot(slot int32) {
	s := &pl.slots[slot]
	s.d, s.ready, s.hup = nil, nil, nil
	s.gen++
	pl.free = append(pl.free, slot)
}

// wait returns once fd has one of events (EPOLLIN, EPOLLOUT), or an error or
// hang-up, or with ctx's error once ctx ends first.
func (pl *poller) wait(ctx context.Context, fd int, events uint32) error {
	ready := make(chan struct{})
	slot, err := pl.register(pollSlot{ready: ready}, fd, events|unix.EPOLLONESHOT)
	if err != nil {
		return err
	}
	defer pl.releaseSlot(slot)
	defer pl.ctl(unix.EPOLL_CTL_DEL, fd, nil)
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// register takes a slot for s and adds fd to the epoll instance for events, its
// events naming that slot. If the kernel refuses, the slot is given back.
func (pl *poller) register(s pollSlot, fd int, events uint32) (int32, error) {
	pl.mu.Lock()
	slot, gen := pl.takeSlot(s)
	pl.mu.Unlock()
	if err := pl.ctl(unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: events, Fd: slot, Pad: int32(gen)}); err != nil {
		pl.releaseSlot(slot)
		return 0, err
	}
	return slot, nil
}

// releaseSlot gives a registration's slot back, once its descriptor has left the
// epoll instance.
func (pl *poller) releaseSlot(slot int32) {
	pl.mu.Lock()
	pl.freeSlot(slot)
	pl.mu.Unlock()
}

// hangUpWatch is a plain-HTTP client connection registered with a poller for its
// peer's end (EPOLLRDHUP, edge-triggered: one event, and none for the bytes that
// come before it).
type hangUpWatch struct {
	pl   *poller
	rc   syscall.RawConn
	slot int32
}

// watchHangUp has a poller call f when c's peer shuts its end or c fails. Without a
// poller, or if c cannot be registered, nothing watches c.
func (p *Proxy) watchHangUp(c net.Conn, f func()) hangUpWatch {
	pl := p.nextPoller()
	sc, ok := c.(syscall.Conn)
	if pl == nil || !ok {
		return hangUpWatch{}
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return hangUpWatch{}
	}
	var (
		slot int32
		rerr error = net.ErrClosed
	)
	rc.Control(func(fd uintptr) { slot, rerr = pl.register(pollSlot{hup: f}, int(fd), unix.EPOLLRDHUP|unix.EPOLLET) })
	if rerr != nil {
		return hangUpWatch{}
	}
	return hangUpWatch{pl: pl, rc: rc, slot: slot}
}

// stop ends the watch, once. A connection already closed has left the epoll
// instance with its last descriptor.
func (h *hangUpWatch) stop() {
	if h.pl == nil {
		return
	}
	h.rc.Control(func(fd uintptr) { h.pl.ctl(unix.EPOLL_CTL_DEL, int(fd), nil) })
	h.pl.releaseSlot(h.slot)
	h.pl = nil
}

// watch starts reading t's two sources. If the first cannot be watched (the
// kernel refuses the registration: its epoll limits, or the poller is stopped),
// nothing of t is in the poller's hands and both directions go to copiers; if the
// second cannot, the first may be already, and a copier reading beside the poller
// could reorder its bytes: the tunnel ends.
func (t *tunnel) watch() {
	if err := t.dirs[0].watch(); err != nil {
		t.dirs[0].toCopiers(nil)
		return
	}
	if err := t.dirs[1].watch(); err != nil {
		t.dirs[1].fail()
	}
}

// watch registers d's source with the poller's epoll instance.
func (d *direction) watch() error {
	if !d.src.use() {
		return net.ErrClosed
	}
	defer d.src.done()
	return d.pl.ctl(unix.EPOLL_CTL_ADD, d.src.fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: d.slot, Pad: int32(d.gen)})
}

// ctl changes fd's registration with pl's epoll instance (epoll_ctl).
func (pl *poller) ctl(op, fd int, ev *unix.EpollEvent) error {
	var err error
	if cerr := pl.rc.Control(func(efd uintptr) { err = unix.EpollCtl(int(efd), op, fd, ev) }); cerr != nil {
		return cerr
	}
	if err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// unwatch stops the poller reading d's source, which stays open.
func (d *direction) unwatch() {
	if !d.src.use() {
		return // closed: it left the epoll instance with its descriptor
	}
	d.pl.ctl(unix.EPOLL_CTL_DEL, d.src.fd, nil)
	d.src.done()
}

// toCopiers gives d, with the bytes pending for its destination, to a copier
// goroutine, and the other direction too if the poller still moves it: a tunnel
// leaves the poller whole, so that once the copiers have their connections it holds
// one descriptor per end again, as the file-descriptor budget counts
// (polledEnds.copierConns). It runs on the poller's goroutine (pump), or before
// either direction is watched, so the other direction is not being pumped
// meanwhile. It does nothing if d has left the poller already.
func (d *direction) toCopiers(pending []byte) {
	if !d.release() {
		return
	}
	d.unwatch()
	o := d.t.dirs[0]
	if o == d {
		o = d.t.dirs[1]
	}
	if o.release() {
		o.unwatch()
		go o.copier(o.t, nil)
	}
	go d.copier(d.t, pending)
}

// release takes d from the poller. It reports whether this call did; only that
// caller may end d or give it to a copier.
func (d *direction) release() bool {
	if d == nil || !d.polled.CompareAndSwap(true, false) {
		return false
	}
	pl := d.pl
	pl.mu.Lock()
	pl.freeSlot(d.slot)
	pl.mu.Unlock()
	return true
}

// run is the poller's goroutine: it takes the epoll instance's events and serves
// them, and waits in the runtime's poller for more, until the instance is closed.
// The events are served inside the wait's callback, which returns false to wait
// again: the runtime's readiness flag is reset only when a wait starts, so an event
// that comes while others are served makes the wait return at once.
func (pl *poller) run() {
	events := make([]unix.EpollEvent, 128)
	ready := make([]readyDirection, 0, len(events))
	var hups []func()
	pl.rc.Read(func(efd uintptr) bool {
		for {
			n, err := rawEpollWaitNow(int(efd), events)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n == 0 {
				return err != nil // stop on an error; wait on none
			}
			pl.mu.Lock()
			for _, ev := range events[:n] {
				if ev.Fd >= 0 && int(ev.Fd) < len(pl.slots) {
					switch s := &pl.slots[ev.Fd]; {
					case s.gen != uint32(ev.Pad):
					case s.d != nil:
						ready = append(ready, readyDirection{s.d, ev.Events})
					case s.ready != nil:
						close(s.ready) // a wait's one event (EPOLLONESHOT)
						s.ready = nil
					case s.hup != nil:
						hups = append(hups, s.hup)
					}
				}
			}
			pl.mu.Unlock()
			for _, r := range ready {
				pl.pump(r.d, r.events)
			}
			clear(ready)
			ready = ready[:0]
			for _, f := range hups {
				f()
			}
			clear(hups)
			hups = hups[:0]
			if n < len(events) {
				return false // all taken: an edge-triggered event comes again only with news
			}
		}
	})
}

type readyDirection struct {
	d      *direction
	events uint32
}

// hangUp are the events after which a source has no more bytes to come: its end, or
// an error, is read at once, since no further event will say so.
const hangUp = unix.EPOLLRDHUP | unix.EPOLLHUP | unix.EPOLLERR

// pump moves what d's source has to its destination: a read and a write, and
// again after a hang-up until the read gives the end. Registration is
// edge-triggered: a read that fills less than the buffer took all there was, and
// bytes that come later raise a new event.
func (pl *poller) pump(d *direction, events uint32) {
	if !d.src.use() {
		return // closed: the tunnel's shut has ended d
	}
	defer d.src.done()
	if !d.dst.use() {
		return
	}
	defer d.dst.done()
	for d.polled.Load() {
		n, rerr := rawRead(d.src.fd, pl.buf)
		for rerr == unix.EINTR {
			n, rerr = rawRead(d.src.fd, pl.buf)
		}
		switch {
		case rerr == unix.EAGAIN:
			return
		case rerr != nil:
			d.fail()
			return
		case n == 0:
			d.eof()
			return
		}
		w, werr := rawWrite(d.dst.fd, pl.buf[:n])
		for werr == unix.EINTR {
			w, werr = rawWrite(d.dst.fd, pl.buf[:n])
		}
		d.count.Add(int64(w))
		switch {
		case werr != nil && werr != unix.EAGAIN:
			d.fail()
			return
		case w < n || n == len(pl.buf):
			// The destination is full, or this is a bulk transfer: a copier's
			// blocking writes and splice take over, with what is left of this piece.
			d.toCopiers(bytes.Clone(pl.buf[w:n]))
			return
		case events&hangUp == 0:
			return
		}
	}
}

// eof passes the end of d's source on as a half-close, as a copier does.
func (d *direction) eof() {
	if !d.release() {
		return
	}
	if !d.t.otherDone() && d.dst.use() {
		rawShutdown(d.dst.fd, unix.SHUT_WR)
		d.dst.done()
	}
	d.t.copierDone()
}

// fail ends the tunnel after an error on d.
func (d *direction) fail() {
	if d.release() {
		d.t.shut()
		d.t.copierDone()
	}
}

// stop closes the epoll instance; run returns.
func (pl *poller) stop() { pl.epoll.Close() }
