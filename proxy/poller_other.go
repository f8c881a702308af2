//go:build !linux

package proxy

import (
	"context"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// Elsewhere than Linux, every tunnel direction is a copier goroutine.
type poller struct{}

type direction struct{}

// polledEnds is never made here.
type polledEnds struct{}

func (*polledEnds) copierConns() (net.Conn, net.Conn, error) { return nil, nil, net.ErrClosed }
func (*polledEnds) close()                                   {}
func (*polledEnds) quiet() (time.Duration, bool)             { return 0, false }

func newPollers(int) []*poller      { return nil }
func (*poller) attach(*tunnel) bool { return false }
func (*poller) run()                {}
func (*poller) stop()               {}
func (*tunnel) watch()              {}
func (*direction) release() bool    { return false }

// socket is never made here: tunnels keep their net.Conns.
type socket struct{}

func (*socket) close()                                                   {}
func detachClient(net.Conn) (*socket, bool)                              { return nil, false }
func (*poller) attachSockets(*tunnel, *socket, *socket)                  {}
func (*poller) writeAll(*socket, []byte, time.Duration) (int, error)     { return 0, net.ErrClosed }
func (*poller) connect(context.Context, netip.AddrPort) (*socket, error) { return nil, net.ErrClosed }

func acceptSocket(syscall.RawConn, net.Addr) (*socket, netip.AddrPort, error) {
	return nil, netip.AddrPort{}, net.ErrClosed
}

func (*socket) netConn(net.Addr, net.Addr) (net.Conn, error) { return nil, net.ErrClosed }

type sockReader struct {
	pl *poller
	s  *socket
	by time.Time
}

func (*sockReader) Read([]byte) (int, error) { return 0, net.ErrClosed }

// hangUpWatch watches nothing without a poller.
type hangUpWatch struct{}

func (p *Proxy) watchHangUp(net.Conn, func()) hangUpWatch { return hangUpWatch{} }

func (*hangUpWatch) stop() {}
