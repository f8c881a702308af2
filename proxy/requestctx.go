package proxy

import (
	"context"
	"sync"
	"time"
)

// requestCtx is the context of a request on the plain-HTTP loop: done when the
// client goes away, a write to it fails, or the request ends. It carries no
// deadline and no values, as the context.Background it replaces.
//
// context.WithCancel and then context.AfterFunc (the upstream exchange's hook that
// aborts a wait for the origin) cost per request a child context, a map of
// children, a channel and their closures, about 3% of a plain request's CPU.
// requestCtx costs one struct; its AfterFunc method, which afterFunc calls as
// context.AfterFunc would, a closure; and a channel only if Done is called.
type requestCtx struct {
	mu    sync.Mutex
	done  chan struct{} // made by the first Done
	err   error
	after []func() // to run when canceled; nil where stopped; let go once canceled
	first [1]func()
}

func newRequestCtx() *requestCtx {
	c := &requestCtx{}
	c.after = c.first[:0]
	return c
}

func (c *requestCtx) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c *requestCtx) Value(any) any               { return nil }
func (c *requestCtx) String() string              { return "proxy.requestCtx" }

func (c *requestCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
		if c.err != nil {
			close(c.done)
		}
	}
	return c.done
}

func (c *requestCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// cancel ends the context, once: Done closes, Err is context.Canceled, and each
// function given to AfterFunc and not stopped starts in a goroutine of its own.
func (c *requestCtx) cancel() {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = context.Canceled
	if c.done != nil {
		close(c.done)
	}
	after := c.after
	c.after = nil
	c.mu.Unlock()
	for _, f := range after {
		if f != nil {
			go f()
		}
	}
}

// AfterFunc arranges for f to run in a goroutine of its own once c is done, with
// context.AfterFunc's contract: stop reports whether it kept f from running.
func (c *requestCtx) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	i := len(c.after)
	c.after = append(c.after, f)
	c.mu.Unlock()
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.err != nil || c.after[i] == nil {
			return false // started, or stopped before
		}
		c.after[i] = nil
		return true
	}
}

// afterFunc is context.AfterFunc, through ctx's own AfterFunc method when it has
// one (a requestCtx): context.AfterFunc would put a child context between them.
func afterFunc(ctx context.Context, f func()) (stop func() bool) {
	if a, ok := ctx.(interface{ AfterFunc(func()) func() bool }); ok {
		return a.AfterFunc(f)
	}
	return context.AfterFunc(ctx, f)
}
