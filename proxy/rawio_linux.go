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
type rawIO struct {
	c  net.Conn
	rc syscall.RawConn
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
	return &rawIO{c: c, rc: rc}
}

func (r *rawIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var (
		n    int
		rerr error
	)
	err := r.rc.Read(func(fd uintptr) bool {
		for {
			n, rerr = rawRead(int(fd), p)
			if rerr != unix.EINTR {
				break
			}
		}
		return rerr != unix.EAGAIN
	})
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

func (r *rawIO) Write(p []byte) (int, error) {
	var (
		done int
		werr error
	)
	err := r.rc.Write(func(fd uintptr) bool {
		for done < len(p) {
			n, e := rawWrite(int(fd), p[done:])
			switch e {
			case nil:
				done += n
			case unix.EINTR:
			case unix.EAGAIN:
				return false
			default:
				werr = e
				return true
			}
		}
		return true
	})
	switch {
	case err != nil:
		return done, r.opError("write", err)
	case werr != nil:
		return done, r.opError("write", os.NewSyscallError("write", werr))
	}
	return done, nil
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
