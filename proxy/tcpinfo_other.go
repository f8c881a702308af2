//go:build !linux

package proxy

import (
	"net"
	"time"
)

// quietFor is not available off Linux: tunnels there are not closed for idleness.
func quietFor(net.Conn) (time.Duration, bool) { return 0, false }
