package proxy

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/egressd/egressd/policy"
)

// Why a tunnel was closed.
const (
	closeDone     = "done"     // both directions ended
	closeIdle     = "idle"     // no bytes either way for IdleTimeout
	closeRevoked  = "revoked"  // a reload removed the rule that allowed it
	closeShutdown = "shutdown" // the drain time ran out
	// closeHalfClosed: one side ended its direction and the other did not follow
	// within the half-closed timeout (an origin that ignores the client's FIN).
	closeHalfClosed = "half_closed"
)

// tunnel is one CONNECT tunnel. Both ends are raw connections (normally
// *net.TCPConn): a poller moves the bytes of a tunnel that carries small pieces
// (see poller_linux.go), and a copier goroutine per direction those of one that
// carries more, through TCPConn.ReadFrom, where Linux splice moves the bytes without
// copying them through user space (see relay).
type tunnel struct {
	// client and upstream are the ends, nil once a poller has taken them (polled).
	client   net.Conn
	upstream *net.TCPConn
	polled   *polledEnds
	host     string
	port     uint16
	ex       *exchange
	end      func(*tunnel) // called once, when both directions have ended

	up, down atomic.Int64 // bytes moved each way
	// dirs are the directions a poller moves, each until it ends or goes to a
	// copier; nil without a poller.
	dirs    [2]*direction
	running atomic.Int32 // directions still running
	reason  atomic.Pointer[string]
	// halfClosedAt is when the first direction ended (UnixNano), 0 before: the
	// sweep closes a tunnel left half-closed for Options.HalfCloseTimeout.
	halfClosedAt atomic.Int64
}

// start moves the tunnel's bytes: on its poller if it has one (attached), else on
// two copiers.
func (t *tunnel) start() {
	if t.polled != nil {
		t.watch()
		return
	}
	go copyClientToUpstream(t, nil)
	go copyUpstreamToClient(t, nil)
}

// copyClientToUpstream and copyUpstreamToClient are the tunnel's copier goroutines,
// named so that a goroutine dump says what they are. pending is what a poller read
// and could not write before it gave the direction up.
func copyClientToUpstream(t *tunnel, pending []byte) {
	if client, upstream, ok := t.copierConns(); ok {
		t.copy(upstream, client, &t.up, pending)
	}
}

func copyUpstreamToClient(t *tunnel, pending []byte) {
	if client, upstream, ok := t.copierConns(); ok {
		t.copy(client, upstream, &t.down, pending)
	}
}

// copierConns returns the ends for a copier. Once the tunnel is closed there are
// none: the direction ends here.
func (t *tunnel) copierConns() (client, upstream net.Conn, ok bool) {
	if t.polled == nil {
		return t.client, t.upstream, true
	}
	client, upstream, err := t.polled.copierConns()
	if err != nil {
		t.shut()
		t.copierDone()
		return nil, nil, false
	}
	return client, upstream, true
}

func (t *tunnel) copy(dst, src net.Conn, count *atomic.Int64, pending []byte) {
	var err error
	if len(pending) > 0 {
		var n int
		n, err = dst.Write(pending)
		count.Add(int64(n))
	}
	if err == nil {
		var n int64
		n, err = halfCopy(dst, src, t.otherDone)
		count.Add(n)
	}
	if err != nil {
		t.shut() // a polled other direction learns of it here
	}
	t.copierDone()
}

// otherDone reports, to a direction that has finished copying, whether the other
// one has ended too: then the tunnel closes at once, and a half-close first would
// be one system call for nothing.
func (t *tunnel) otherDone() bool { return t.running.Load() == 1 }

func (t *tunnel) copierDone() {
	switch t.running.Add(-1) {
	case 1:
		t.halfClosedAt.Store(time.Now().UnixNano())
	case 0:
		t.close(closeDone)
		t.end(t)
	}
}

// closeWriter is a connection that can half-close: *net.TCPConn.
type closeWriter interface{ CloseWrite() error }

// halfCopy copies src to dst until src ends. A clean end (EOF) is passed on as a
// half-close, so the other direction keeps going, unless last says that it has
// ended already; an error ends both, and is returned.
func halfCopy(dst, src net.Conn, last func() bool) (int64, error) {
	n, err := relay(dst, src)
	if cw, ok := dst.(closeWriter); ok && err == nil {
		if !last() {
			cw.CloseWrite()
		}
		return n, nil
	}
	dst.Close()
	src.Close()
	if err == nil {
		err = errors.New("cannot half-close the destination")
	}
	return n, err
}

// smallSize is the buffer of a relay's read-and-write phase: one TLS record fits.
const smallSize = 16 << 10

// smallBufs holds the read-and-write buffers. A relay takes one only while its
// source has bytes ready, so an idle tunnel holds none.
var smallBufs = sync.Pool{New: func() any { b := make([]byte, smallSize); return &b }}

// relay moves src to dst as HAProxy's splice-auto does: with read and write while
// the pieces are small, and with splice (dst.ReadFrom) from the first read that
// fills the buffer, a bulk transfer. A tunnel that carries a handshake and a few
// requests so costs a read and a write per piece instead of splice's two calls
// through a pipe; a tunnel that carries a download moves it without copying.
func relay(dst, src net.Conn) (int64, error) {
	sc, ok := src.(syscall.Conn)
	if !ok {
		return spliceRest(dst, src, 0)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return spliceRest(dst, src, 0)
	}
	var total int64
	for {
		var (
			buf  *[]byte
			n    int
			rerr error
		)
		// The read is attempted inside the poller's callback, and the buffer taken
		// there, so a copier waiting for bytes holds no buffer.
		werr := raw.Read(func(fd uintptr) bool {
			b := smallBufs.Get().(*[]byte)
			for {
				n, rerr = syscall.Read(int(fd), *b)
				if rerr != syscall.EINTR {
					break
				}
			}
			if rerr == syscall.EAGAIN {
				smallBufs.Put(b)
				return false // wait until the socket is readable
			}
			buf = b // set only here: a buffer given back must not be given back twice
			return true
		})
		switch {
		case werr != nil: // closed by the other copier, a sweep or a shutdown; buf is nil
			return total, werr
		case rerr != nil:
			smallBufs.Put(buf)
			return total, os.NewSyscallError("read", rerr)
		case n == 0:
			smallBufs.Put(buf)
			return total, nil // EOF
		}
		w, err := dst.Write((*buf)[:n])
		total += int64(w)
		full := n == len(*buf)
		smallBufs.Put(buf)
		if err != nil {
			return total, err
		}
		if full {
			return spliceRest(dst, src, total)
		}
	}
}

// spliceRest copies the rest of src to dst through dst's ReadFrom, which for two
// TCP connections is splice. It calls ReadFrom directly, not io.Copy: io.Copy would
// try src's WriteTo first, which for TCP to TCP falls back to a second io.Copy
// before reaching the same splice. The shorter call chain keeps an idle copier's
// stack at its smallest size.
func spliceRest(dst, src net.Conn, done int64) (int64, error) {
	var (
		n   int64
		err error
	)
	if rf, ok := dst.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(src)
	} else {
		n, err = io.Copy(dst, src)
	}
	return done + n, err
}

// close ends the tunnel; the first reason given is the one reported.
func (t *tunnel) close(reason string) {
	t.reason.CompareAndSwap(nil, &reason)
	t.shut()
}

// shut closes both ends, and ends the directions a poller still moves: a closed
// descriptor leaves the epoll instance with no event, so no read would tell them.
func (t *tunnel) shut() {
	if t.polled != nil {
		t.polled.close()
	} else {
		t.client.Close()
		t.upstream.Close()
	}
	for _, d := range t.dirs {
		if d.release() {
			t.copierDone()
		}
	}
}

// quiet is quietFor of the tunnel's client connection.
func (t *tunnel) quiet() (time.Duration, bool) {
	if t.polled != nil {
		return t.polled.quiet()
	}
	return quietFor(t.client)
}

func (t *tunnel) closeReason() string {
	if r := t.reason.Load(); r != nil {
		return *r
	}
	return closeDone
}

// tunnelSet is the open tunnels, for revocation, idle sweeps and shutdown. Its lock
// is taken when a tunnel opens or closes and by those sweeps, never per byte.
type tunnelSet struct {
	mu sync.Mutex
	m  map[*tunnel]struct{}
}

func newTunnelSet() *tunnelSet { return &tunnelSet{m: map[*tunnel]struct{}{}} }

func (s *tunnelSet) add(t *tunnel) {
	s.mu.Lock()
	s.m[t] = struct{}{}
	s.mu.Unlock()
}

func (s *tunnelSet) remove(t *tunnel) {
	s.mu.Lock()
	delete(s.m, t)
	s.mu.Unlock()
}

// each calls f for every tunnel open when it is called, outside the lock: closing a
// tunnel that a poller moves ends it there and then, and its end takes the lock; and
// a sweep's TCP_INFO reads do not hold up tunnels opening and closing.
func (s *tunnelSet) each(f func(*tunnel)) {
	s.mu.Lock()
	ts := make([]*tunnel, 0, len(s.m))
	for t := range s.m {
		ts = append(ts, t)
	}
	s.mu.Unlock()
	for _, t := range ts {
		f(t)
	}
}

// revoke closes the tunnels that m does not allow.
func (s *tunnelSet) revoke(m *policy.Matcher, log *slog.Logger) {
	s.each(func(t *tunnel) {
		if d := m.Decide(t.host, t.port); !d.Allow {
			log.Info("tunnel revoked", "target", d.Target(), "reason", string(d.Reason))
			t.close(closeRevoked)
		}
	})
}

func (s *tunnelSet) closeAll(reason string) int {
	n := 0
	s.each(func(t *tunnel) {
		t.close(reason)
		n++
	})
	return n
}

// sweep closes, every so often, the tunnels that have moved no byte in either
// direction for idle, and those left half-closed for halfClosed. It reads the
// kernel's own record of the client socket's last data sent and received (TCP_INFO),
// which covers both directions, so the copy loops stay plain splices with no
// per-byte bookkeeping, and no tunnel needs a timer of its own. It returns a stop
// function.
func (s *tunnelSet) sweep(idle, halfClosed time.Duration, m *metrics, log *slog.Logger) (stop func()) {
	return every(min(max(min(idle, halfClosed)/4, 10*time.Millisecond), time.Second), func() {
		now := time.Now().UnixNano()
		s.each(func(t *tunnel) {
			if at := t.halfClosedAt.Load(); at != 0 && now-at >= int64(halfClosed) {
				t.close(closeHalfClosed)
				return
			}
			if quiet, ok := t.quiet(); ok && quiet >= idle {
				log.Debug("tunnel idle", "target", t.host, "quiet", quiet)
				t.close(closeIdle)
			}
		})
	})
}
