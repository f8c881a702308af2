//go:build !linux

package proxy

import "syscall"

// deferAccept is a Linux socket option; elsewhere connections are accepted at once.
func deferAccept(_, _ string, _ syscall.RawConn) error { return nil }
