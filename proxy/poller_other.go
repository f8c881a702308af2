//go:build !linux

package proxy

// Elsewhere than Linux, every tunnel direction is a copier goroutine.
type poller struct{}

type direction struct{}

func newPollers(int) []*poller      { return nil }
func (*poller) attach(*tunnel) bool { return false }
func (*poller) run()                {}
func (*poller) stop()               {}
func (*direction) watch()           {}
func (*direction) release() bool    { return false }
