//go:build !linux

package proxy

import (
	"net"
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
