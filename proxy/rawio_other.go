//go:build !linux

package proxy

import (
	"io"
	"net"
)

func newRawIO(c net.Conn) io.ReadWriter { return c }
