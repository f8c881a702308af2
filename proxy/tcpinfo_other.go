//go:build !linux

package proxy

import (
	"errors"
	"net"
	"net/netip"
	"time"
)

// quietFor is not available off Linux: tunnels there are not closed for idleness.
func quietFor(net.Conn) (time.Duration, bool) { return 0, false }

// idleOpen cannot peek off Linux: a kept connection is taken as open.
func idleOpen(*net.TCPConn) bool { return true }

// originalDst needs Linux's SO_ORIGINAL_DST.
func originalDst(*net.TCPConn) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("transparent interception works on Linux only")
}
