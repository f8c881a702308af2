package proxy

import (
	"syscall"

	"github.com/egressd/egressd/internal/defaults"
)

// deferAccept sets TCP_DEFER_ACCEPT on a listening socket (see Listen), for as long
// as the default header timeout: a client that has sent nothing by then is handed
// over anyway, and the proxy's own ReadHeaderTimeout deals with it.
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
