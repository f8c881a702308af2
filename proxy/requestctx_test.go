package proxy

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestRequestCtx: the plain loop's request context keeps context's contract: Done
// and Err once canceled (and only then), each AfterFunc function run once in a
// goroutine of its own unless stopped first, stop's answers as context.AfterFunc's,
// and context.AfterFunc itself working through the method.
func TestRequestCtx(t *testing.T) {
	ran := func() (func(), chan struct{}) {
		ch := make(chan struct{}, 2)
		return func() { ch <- struct{}{} }, ch
	}
	once := func(t *testing.T, ch chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s did not run", what)
		}
		select {
		case <-ch:
			t.Fatalf("%s ran twice", what)
		case <-time.After(20 * time.Millisecond):
		}
	}

	c := newRequestCtx()
	if _, ok := c.Deadline(); ok || c.Value("k") != nil || c.Err() != nil {
		t.Fatal("a fresh request context has a deadline, a value or an error")
	}
	done := c.Done()
	select {
	case <-done:
		t.Fatal("Done closed before cancel")
	default:
	}
	f1, ran1 := ran()
	stop1 := afterFunc(c, f1)
	f2, ran2 := ran()
	stop2 := afterFunc(c, f2)
	f3, ran3 := ran()
	stop3 := context.AfterFunc(c, f3) // context's own, through the method
	if !stop2() {
		t.Error("stop before cancel: false; want true")
	}
	if stop2() {
		t.Error("a second stop: true; want false")
	}

	// A function that blocks does not hold up cancel: it runs on its own goroutine.
	block := make(chan struct{})
	defer close(block)
	c2 := newRequestCtx()
	afterFunc(c2, func() { <-block })
	canceled := make(chan struct{})
	go func() { c2.cancel(); close(canceled) }()
	select {
	case <-canceled:
	case <-time.After(5 * time.Second):
		t.Fatal("cancel waits for an AfterFunc function")
	}

	c.cancel()
	c.cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed by cancel")
	}
	if !errors.Is(c.Err(), context.Canceled) {
		t.Errorf("Err after cancel: %v; want context.Canceled", c.Err())
	}
	once(t, ran1, "an AfterFunc function")
	once(t, ran3, "context.AfterFunc's function")
	select {
	case <-ran2:
		t.Error("a stopped AfterFunc function ran")
	case <-time.After(20 * time.Millisecond):
	}
	if stop1() || stop3() {
		t.Error("stop after the function started: true; want false")
	}

	f4, ran4 := ran()
	stop4 := afterFunc(c, f4)
	once(t, ran4, "an AfterFunc function given after cancel")
	if stop4() {
		t.Error("stop of a function given after cancel: true; want false")
	}
	select {
	case <-newCanceled().Done():
	default:
		t.Error("Done first called after cancel is not closed")
	}
}

func newCanceled() *requestCtx {
	c := newRequestCtx()
	c.cancel()
	return c
}
