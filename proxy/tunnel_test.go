package proxy

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// TestHalfCopy moves payloads around the size where relay turns from read and
// write to splice, through halfCopy between two real TCP connections, and checks
// the bytes, the count, and that the end is passed on as a half-close.
func TestHalfCopy(t *testing.T) {
	for _, size := range []int{0, 1, smallSize - 1, smallSize, smallSize + 1, 3<<20 + 7} {
		t.Run(strconv.Itoa(size)+"_bytes", func(t *testing.T) {
			sender, srcEnd := tcpPair(t)   // sender writes into the tunnel's source
			dstEnd, receiver := tcpPair(t) // the tunnel writes to dstEnd; receiver reads
			payload := make([]byte, size)
			rng := rand.New(rand.NewPCG(1, uint64(size)))
			for i := range payload {
				payload[i] = byte(rng.Uint32())
			}

			done := make(chan int64, 1)
			go func() { n, _ := halfCopy(dstEnd, srcEnd, func() bool { return false }); done <- n }()
			go func() {
				sender.Write(payload)
				sender.CloseWrite()
			}()
			receiver.SetDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(receiver) // ends only if the half-close came through
			if err != nil {
				t.Fatalf("reading the far end: %v", err)
			}
			if !bytes.Equal(got, payload) {
				t.Errorf("got %d bytes, want the %d sent (equal: false)", len(got), len(payload))
			}
			select {
			case n := <-done:
				if n != int64(size) {
					t.Errorf("halfCopy counted %d bytes; want %d", n, size)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("halfCopy did not return after the source ended")
			}
			// The other direction stays open after a half-close.
			if _, err := receiver.Write([]byte("back")); err != nil {
				t.Errorf("writing back after the half-close: %v", err)
			}
			dstEnd.SetReadDeadline(time.Now().Add(5 * time.Second))
			back := make([]byte, 4)
			if _, err := io.ReadFull(dstEnd, back); err != nil || string(back) != "back" {
				t.Errorf("read back %q, %v; want %q", back, err, "back")
			}
		})
	}
}

// TestHalfCopyClosed checks that closing the source while the relay waits for
// bytes ends it, and that it then closes both ends.
func TestHalfCopyClosed(t *testing.T) {
	_, srcEnd := tcpPair(t)
	dstEnd, receiver := tcpPair(t)
	done := make(chan int64, 1)
	go func() { n, _ := halfCopy(dstEnd, srcEnd, func() bool { return false }); done <- n }()
	time.Sleep(20 * time.Millisecond) // let it wait in the poller
	srcEnd.Close()
	select {
	case n := <-done:
		if n != 0 {
			t.Errorf("counted %d bytes; want 0", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("halfCopy did not return after its source was closed")
	}
	receiver.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := receiver.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("far end read %d, %v; want EOF (the destination closed)", n, err)
	}
}
