package proxy

import (
	"syscall"

	"github.com/egressd/egressd/internal/defaults"
)

// deferAccept sets TCP_DEFER_ACCEPT on a listening socket (see Listen).
func deferAccept(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_DEFER_ACCEPT, int(defaults.ReadHeaderTimeout.Seconds()))
	})
	if err != nil {
		return err
	}
	return serr
}
