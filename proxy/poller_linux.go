package proxy

import (
	"bytes"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

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
// other side at once. A direction whose destination cannot take all of it, or whose
// read fills the buffer (a bulk transfer), leaves the poller for a copier goroutine
// of its own: blocking writes and splice, as before, with nothing of the poller.
//
// Descriptors are only ever used through their net.Conn's RawConn, which holds a
// reference for the length of the call: a connection closed by a sweep, a
// revocation or a shutdown cannot be a reused descriptor number under the poller.
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

type pollSlot struct {
	d   *direction
	gen uint32
}

// direction is one way of a tunnel while a poller moves its bytes.
type direction struct {
	t              *tunnel
	pl             *poller
	dst            *net.TCPConn // half-closed when the source ends
	srcRaw, dstRaw syscall.RawConn
	count          *atomic.Int64
	copier         func(*tunnel, []byte) // the goroutine that takes over
	slot           int32
	gen            uint32
	polled         atomic.Bool // the poller owns it; cleared once, by release
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

// attach gives t's two directions to pl. It reports false, having changed nothing,
// if either end is not a TCP connection.
func (pl *poller) attach(t *tunnel) bool {
	client, ok := t.client.(*net.TCPConn)
	if !ok {
		return false
	}
	cr, err1 := client.SyscallConn()
	ur, err2 := t.upstream.SyscallConn()
	if err1 != nil || err2 != nil {
		return false
	}
	t.dirs = [2]*direction{
		{t: t, pl: pl, dst: t.upstream, srcRaw: cr, dstRaw: ur, count: &t.up, copier: copyClientToUpstream},
		{t: t, pl: pl, dst: client, srcRaw: ur, dstRaw: cr, count: &t.down, copier: copyUpstreamToClient},
	}
	pl.mu.Lock()
	for _, d := range t.dirs {
		d.polled.Store(true)
		if n := len(pl.free); n > 0 {
			d.slot, pl.free = pl.free[n-1], pl.free[:n-1]
		} else {
			d.slot = int32(len(pl.slots))
			pl.slots = append(pl.slots, pollSlot{})
		}
		d.gen = pl.slots[d.slot].gen
		pl.slots[d.slot].d = d
	}
	pl.mu.Unlock()
	return true
}

// watch starts reading d's source; a direction that cannot be watched goes to a
// copier.
func (d *direction) watch() {
	var err error
	cerr := d.srcRaw.Control(func(sfd uintptr) {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: d.slot, Pad: int32(d.gen)}
		perr := d.pl.rc.Control(func(efd uintptr) {
			err = unix.EpollCtl(int(efd), unix.EPOLL_CTL_ADD, int(sfd), &ev)
		})
		if err == nil {
			err = perr
		}
	})
	if cerr == nil && err == nil {
		return
	}
	if d.release() { // not closed meanwhile: the copier finds out if it is
		go d.copier(d.t, nil)
	}
}

// unwatch stops the poller reading d's source, which stays open.
func (d *direction) unwatch() {
	d.srcRaw.Control(func(sfd uintptr) {
		d.pl.rc.Control(func(efd uintptr) {
			unix.EpollCtl(int(efd), unix.EPOLL_CTL_DEL, int(sfd), nil)
		})
	})
}

// release takes d from the poller. It reports whether this call did; only that
// caller may end d or give it to a copier.
func (d *direction) release() bool {
	if d == nil || !d.polled.CompareAndSwap(true, false) {
		return false
	}
	pl := d.pl
	pl.mu.Lock()
	s := &pl.slots[d.slot]
	s.d = nil
	s.gen++
	pl.free = append(pl.free, d.slot)
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
	pl.rc.Read(func(efd uintptr) bool {
		for {
			n, err := unix.EpollWait(int(efd), events, 0)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n == 0 {
				return err != nil // stop on an error; wait on none
			}
			pl.mu.Lock()
			for _, ev := range events[:n] {
				if ev.Fd >= 0 && int(ev.Fd) < len(pl.slots) {
					if s := pl.slots[ev.Fd]; s.d != nil && s.gen == uint32(ev.Pad) {
						ready = append(ready, readyDirection{s.d, ev.Events})
					}
				}
			}
			pl.mu.Unlock()
			for _, r := range ready {
				pl.pump(r.d, r.events)
			}
			clear(ready)
			ready = ready[:0]
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
	for d.polled.Load() {
		var (
			n    int
			rerr error
		)
		if err := d.srcRaw.Read(func(fd uintptr) bool {
			for {
				n, rerr = unix.Read(int(fd), pl.buf)
				if rerr != unix.EINTR {
					return true
				}
			}
		}); err != nil {
			rerr = err // closed: by a sweep, a revocation, a shutdown or the other direction
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
		var (
			w    int
			werr error
		)
		if err := d.dstRaw.Write(func(fd uintptr) bool {
			for {
				w, werr = unix.Write(int(fd), pl.buf[:n])
				if werr != unix.EINTR {
					return true
				}
			}
		}); err != nil {
			werr = err
		}
		w = max(w, 0)
		d.count.Add(int64(w))
		switch {
		case werr != nil && werr != unix.EAGAIN:
			d.fail()
			return
		case w < n || n == len(pl.buf):
			// The destination is full, or this is a bulk transfer: a copier's
			// blocking writes and splice take over, with what is left of this piece.
			if d.release() {
				d.unwatch()
				go d.copier(d.t, bytes.Clone(pl.buf[w:n]))
			}
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
	if !d.t.otherDone() {
		d.dst.CloseWrite()
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
