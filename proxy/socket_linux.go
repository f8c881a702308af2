package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A polled tunnel's sockets live outside the Go runtime: no poll descriptor, no
// finalizer, no net.Conn, and no system call that the runtime's scheduler watches.
// The runtime counts a goroutine in a system call as one that may block; when the
// call is still running at its monitor's next look (20 us on; a loopback connect
// runs the whole handshake, and the kernel may preempt the thread in the middle of
// any call), the monitor hands the processor to another thread and wakes every 20
// us for a while after. Calls on non-blocking sockets cannot block, so these are
// made raw: the monitor sees a goroutine running, and sleeps. Under a load of new
// tunnels it woke about 2 800 times a second (a tenth of egressd's CPU) and now
// wakes about 700 times.
//
// Clients are accepted (acceptSocket) and upstreams dialled (poller.connect) as
// bare sockets, and whatever must be waited for (a head not yet in, a handshake
// not done within connect, an answer that does not fit) is waited for in the
// poller's epoll instance (poller.wait). A client whose first request is not a
// CONNECT goes to net/http as a net.Conn (socket.netConn).

// socket is a descriptor of a polled tunnel, out of the runtime's poller. refs
// counts the open reference and the calls in progress; close sets socketClosed, and
// the last reference gone closes the descriptor.
type socket struct {
	fd   int
	refs atomic.Int32
}

// socketClosed refuses new calls; socketTaken keeps the last reference from
// closing the descriptor, which take has given away.
const (
	socketClosed = 1 << 30
	socketTaken  = 1 << 29
)

// detach returns a duplicate of c's descriptor as a socket; c stays open.
func detach(c *net.TCPConn) (*socket, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	cerr := raw.Control(func(f uintptr) { fd, err = dupCloexec(f) })
	if cerr != nil {
		return nil, cerr
	}
	if err != nil {
		return nil, err
	}
	s := &socket{fd: fd}
	s.refs.Store(1)
	return s, nil
}

// dupCloexec duplicates fd, close-on-exec.
func dupCloexec(fd uintptr) (int, error) {
	d, err := unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("fcntl", err)
	}
	return d, nil
}

// use takes a reference for a call on s.fd; false once s is closed.
func (s *socket) use() bool {
	for {
		r := s.refs.Load()
		if r&socketClosed != 0 {
			return false
		}
		if s.refs.CompareAndSwap(r, r+1) {
			return true
		}
	}
}

// done gives back use's reference.
func (s *socket) done() {
	if s.refs.Add(-1) == socketClosed {
		rawClose(s.fd)
	}
}

// take ends s's own use of its descriptor and gives it to the caller: no call
// starts on it any more, and take returns once those in progress are done (a
// poller's read or write, a sweep's TCP_INFO: each a system call, so the wait is
// short). ok is false if s was closed first.
func (s *socket) take() (fd int, ok bool) {
	for {
		r := s.refs.Load()
		if r&socketClosed != 0 {
			return -1, false
		}
		if s.refs.CompareAndSwap(r, r|socketClosed|socketTaken) {
			break
		}
	}
	for s.refs.Load() != socketClosed|socketTaken|1 { // the open reference alone
		runtime.Gosched()
	}
	return s.fd, true
}

// close closes s once the calls in progress are done; later calls are refused.
func (s *socket) close() {
	for {
		r := s.refs.Load()
		if r&socketClosed != 0 {
			return
		}
		if s.refs.CompareAndSwap(r, r|socketClosed) {
			s.done() // the open reference
			return
		}
	}
}

// quiet is quietFor of s.
func (s *socket) quiet() (time.Duration, bool) {
	if !s.use() {
		return 0, false
	}
	defer s.done()
	return quietFd(s.fd)
}

// Raw system calls on non-blocking descriptors: they never wait.

func rawRead(fd int, p []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func rawWrite(fd int, p []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func rawClose(fd int) error {
	_, _, e := unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

func rawShutdown(fd, how int) error {
	_, _, e := unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0)
	if e != 0 {
		return e
	}
	return nil
}

func rawEpollWaitNow(efd int, events []unix.EpollEvent) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(efd), uintptr(unsafe.Pointer(unsafe.SliceData(events))), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// connect opens a TCP connection to ap on a socket of its own, for a polled
// tunnel: non-blocking, out of the runtime's poller, without the keep-alive and
// address look-ups of a net.Conn. A connection to a near address is usually made
// within the connect call (loopback's whole handshake runs in it); one that is not
// is waited for in pl's epoll instance, until ctx ends. Errors read as net.Dialer's.
func (pl *poller) connect(ctx context.Context, ap netip.AddrPort) (*socket, error) {
	opErr := func(call string, err error) error {
		if call != "" {
			err = os.NewSyscallError(call, err)
		}
		return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(ap), Err: err}
	}
	sa, salen, family, err := rawSockaddr(ap)
	if err != nil {
		return nil, opErr("", err)
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, opErr("socket", err)
	}
	if err := rawSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		rawClose(fd)
		return nil, opErr("setsockopt", err)
	}
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(sa), uintptr(salen))
	runtime.KeepAlive(sa)
	switch e {
	case 0:
	case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
		err = connected(fd)
		if err == errInProgress {
			if err = pl.wait(ctx, fd, unix.EPOLLOUT); err == nil {
				err = connected(fd)
			}
		}
		if err != nil {
			rawClose(fd)
			if err == errInProgress || ctx.Err() != nil {
				if ctx.Err() == context.Canceled {
					return nil, opErr("", ctx.Err())
				}
				return nil, opErr("", os.ErrDeadlineExceeded)
			}
			return nil, opErr("connect", err)
		}
	default:
		rawClose(fd)
		return nil, opErr("connect", e)
	}
	s := &socket{fd: fd}
	s.refs.Store(1)
	return s, nil
}

// errInProgress: a connect has not ended yet.
var errInProgress = errors.New("connect in progress")

// connected reports how fd's connect ended: nil once connected, the connection's
// error, or errInProgress.
func connected(fd int) error {
	pfd := unix.PollFd{Fd: int32(fd), Events: unix.POLLOUT}
	var ts unix.Timespec // zero: do not wait
	n, _, e := unix.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&pfd)), 1, uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
	switch {
	case e != 0 && e != unix.EINTR:
		return e
	case e != 0 || n == 0:
		return errInProgress
	case pfd.Revents == unix.POLLOUT:
		return nil
	}
	var v int32
	l := uint32(4)
	if _, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_ERROR, uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return e
	}
	if v != 0 {
		return unix.Errno(v)
	}
	return nil
}

// rawSockaddr returns ap as the kernel takes it.
func rawSockaddr(ap netip.AddrPort) (sa unsafe.Pointer, n uintptr, family int, err error) {
	a := ap.Addr().Unmap()
	port := [2]byte{byte(ap.Port() >> 8), byte(ap.Port())}
	if a.Is4() {
		rsa := &unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.As4()}
		*(*[2]byte)(unsafe.Pointer(&rsa.Port)) = port
		return unsafe.Pointer(rsa), unix.SizeofSockaddrInet4, unix.AF_INET, nil
	}
	rsa := &unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16()}
	*(*[2]byte)(unsafe.Pointer(&rsa.Port)) = port
	if z := a.Zone(); z != "" {
		ifi, err := net.InterfaceByName(z)
		if err != nil {
			return nil, 0, 0, err
		}
		rsa.Scope_id = uint32(ifi.Index)
	}
	return unsafe.Pointer(rsa), unix.SizeofSockaddrInet6, unix.AF_INET6, nil
}

func rawSetsockoptInt(fd, level, opt, value int) error {
	v := int32(value)
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&v)), 4, 0)
	if e != 0 {
		return e
	}
	return nil
}

// detachClient returns a duplicate of client's socket, client being a TCP
// connection or one with early bytes over it; false for any other connection, or
// where no duplicate can be had (the file limit).
func detachClient(client net.Conn) (*socket, bool) {
	if ec, ok := client.(*earlyConn); ok {
		client = ec.Conn
	}
	tc, ok := client.(*net.TCPConn)
	if !ok {
		return nil, false
	}
	s, err := detach(tc)
	return s, err == nil
}

// writeAll writes b to s, waiting in pl for room while s is full, for up to
// timeout in all. It returns how much was written.
func (pl *poller) writeAll(s *socket, b []byte, timeout time.Duration) (int, error) {
	if !s.use() {
		return 0, net.ErrClosed
	}
	defer s.done()
	var ctx context.Context
	n := 0
	for n < len(b) {
		w, err := rawWrite(s.fd, b[n:])
		n += w
		switch err {
		case nil, unix.EINTR:
		case unix.EAGAIN:
			if ctx == nil {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(context.Background(), timeout)
				defer cancel()
			}
			if err := pl.wait(ctx, s.fd, unix.EPOLLOUT); err != nil {
				return n, err
			}
		default:
			return n, os.NewSyscallError("write", err)
		}
	}
	return n, nil
}

// acceptSocket takes the next connection queued on the listening socket rc is of,
// as a bare socket out of the runtime's poller, with TCP_NODELAY set as net sets
// it; it waits in the runtime's poller while none is queued. rc is an *os.File's
// (a listener's own RawConn cannot wait). Errors read as net.TCPListener.Accept's,
// so that a full file table is temporary.
func acceptSocket(rc syscall.RawConn, addr net.Addr) (*socket, netip.AddrPort, error) {
	var (
		rsa  unix.RawSockaddrAny
		fd   = -1
		aerr error
	)
	err := rc.Read(func(lfd uintptr) bool {
		for {
			n := uint32(unix.SizeofSockaddrAny)
			r, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, lfd, uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&n)), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
			switch e {
			case 0:
				fd = int(r)
				return true
			case unix.EINTR, unix.ECONNABORTED: // a connection reset while queued: the next
			case unix.EAGAIN:
				return false
			default:
				aerr = os.NewSyscallError("accept4", e)
				return true
			}
		}
	})
	if err == nil {
		err = aerr
	}
	if err != nil {
		return nil, netip.AddrPort{}, &net.OpError{Op: "accept", Net: "tcp", Addr: addr, Err: err}
	}
	if e := rawSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); e != nil {
		rawClose(fd) // only a socket that is not TCP refuses it
		return nil, netip.AddrPort{}, &net.OpError{Op: "accept", Net: "tcp", Addr: addr, Err: os.NewSyscallError("setsockopt", e)}
	}
	s := &socket{fd: fd}
	s.refs.Store(1)
	return s, peerAddr(&rsa), nil
}

// peerAddr is rsa as an address, IPv4 unmapped, as net.TCPAddr prints it.
func peerAddr(rsa *unix.RawSockaddrAny) netip.AddrPort {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(p[0])<<8|uint16(p[1]))
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		a := netip.AddrFrom16(sa.Addr).Unmap()
		if sa.Scope_id != 0 {
			zone := strconv.Itoa(int(sa.Scope_id))
			if ifi, err := net.InterfaceByIndex(int(sa.Scope_id)); err == nil {
				zone = ifi.Name
			}
			a = a.WithZone(zone)
		}
		return netip.AddrPortFrom(a, uint16(p[0])<<8|uint16(p[1]))
	}
	return netip.AddrPort{}
}

// sockReader reads a client's socket for its first request, waiting in pl while
// nothing has come, until by.
type sockReader struct {
	pl *poller
	s  *socket
	by time.Time
}

func (r *sockReader) Read(b []byte) (int, error) {
	var ctx context.Context
	for {
		n, err := rawRead(r.s.fd, b)
		switch err {
		case nil:
			if n == 0 && len(b) > 0 {
				return 0, io.EOF
			}
			return n, nil
		case unix.EINTR:
		case unix.EAGAIN:
			if ctx == nil {
				var cancel context.CancelFunc
				ctx, cancel = context.WithDeadline(context.Background(), r.by)
				defer cancel()
			}
			if err := r.pl.wait(ctx, r.s.fd, unix.EPOLLIN|unix.EPOLLRDHUP); err != nil {
				if ctx.Err() != nil {
					return 0, os.ErrDeadlineExceeded
				}
				return 0, err
			}
		default:
			return 0, os.NewSyscallError("read", err)
		}
	}
}

// netConn gives s's descriptor to a net.Conn, once no call is using it: a copier's
// end, or a client's connection for net/http (with its addresses; nil for a
// tunnel's ends). s is spent. At the file limit, where net.FileConn cannot duplicate
// the descriptor, the net.Conn is an *os.File of it, without splice.
func (s *socket) netConn(local, remote net.Addr) (net.Conn, error) {
	fd, ok := s.take()
	if !ok {
		return nil, net.ErrClosed
	}
	f := os.NewFile(uintptr(fd), "socket")
	if c, err := net.FileConn(f); err == nil {
		f.Close() // FileConn has a duplicate of its own
		return c, nil
	}
	return fileConn{File: f, local: local, remote: remote}, nil
}
