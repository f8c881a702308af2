package proxy

import (
	"io"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// rawIO reads and writes a TCP connection with raw system calls through its
// RawConn: the runtime's poller still waits and deadlines still hold, but the
// calls do not count as ones that may block, so sysmon does not take the
// processor back from a long loopback write.
//
// The calls' arguments and results are fields, and the callbacks given to the
// RawConn are made once per connection: a closure per call would put itself and
// what it captures on the heap (the RawConn is an interface), several allocations
// per read or write. So one read and one write may run at a time, not two reads.
type rawIO struct {
	c  net.Conn
	rc syscall.RawConn

	readFn func(fd uintptr) bool
	rp     []byte
	rn     int
	rerr   error

	writeFn func(fd uintptr) bool
	wp      []byte
	wdone   int
	werr    error
}

// newRawIO returns c's raw reader and writer, or c itself if it is not a TCP
// connection.
func newRawIO(c net.Conn) io.ReadWriter {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	r := &rawIO{c: c, rc: rc}
	r.readFn, r.writeFn = r.readOnce, r.writeAll
	return r
}

func (r *rawIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.rp, r.rn, r.rerr = p, 0, nil
	err := r.rc.Read(r.readFn)
	n, rerr := r.rn, r.rerr
	r.rp, r.rerr = nil, nil
	switch {
	case err != nil:
		return 0, r.opError("read", err)
	case rerr != nil:
		return 0, r.opError("read", os.NewSyscallError("read", rerr))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// readOnce is Read's callback: false asks the poller to wait for the descriptor.
func (r *rawIO) readOnce(fd uintptr) bool {
	for {
		r.rn, r.rerr = rawRead(int(fd), r.rp)
		if r.rerr != unix.EINTR {
			break
		}
	}
	return r.rerr != unix.EAGAIN
}

func (r *rawIO) Write(p []byte) (int, error) {
	r.wp, r.wdone, r.werr = p, 0, nil
	err := r.rc.Write(r.writeFn)
	done, werr := r.wdone, r.werr
	r.wp, r.werr = nil, nil
	switch {
	case err != nil:
		return done, r.opError("write", err)
	case werr != nil:
		return done, r.opError("write", os.NewSyscallError("write", werr))
	}
	return done, nil
}

// writeAll is Write's callback: it writes until all is written, the socket is full
// (false: wait), or an error.
func (r *rawIO) writeAll(fd uintptr) bool {
	for r.wdone < len(r.wp) {
		n, e := rawWrite(int(fd), r.wp[r.wdone:])
		switch e {
		case nil:
			r.wdone += n
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			r.werr = e
			return true
		}
	}
	return true
}

// opError shapes err as net's own read and write errors read ("read tcp
// 127.0.0.1:1->127.0.0.1:2: i/o timeout"); the RawConn's own wrapping ("raw-read")
// is taken off.
func (r *rawIO) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: r.c.LocalAddr(), Addr: r.c.RemoteAddr(), Err: err}
}
