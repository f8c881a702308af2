//go:build linux

package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// TestRawIO: raw reads and writes behave as net.Conn's: a write to a full socket
// waits in the runtime's poller and completes whole, a read gives the bytes and
// then io.EOF, and a deadline ends a wait with a timeout error net's callers
// recognise.
func TestRawIO(t *testing.T) {
	client, server := tcpPair(t)
	server.SetWriteBuffer(64 << 10)
	rw := newRawIO(server)
	if _, ok := rw.(*rawIO); !ok {
		t.Fatalf("newRawIO gave %T for a TCP connection", rw)
	}

	want := bytes.Repeat([]byte("0123456789abcdef"), 256<<10) // 4 MiB: many times the buffers
	got := make(chan []byte, 1)
	go func() {
		time.Sleep(100 * time.Millisecond) // the writer finds the socket full first
		b, _ := io.ReadAll(io.LimitReader(client, int64(len(want))))
		got <- b
	}()
	server.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if n, err := rw.Write(want); n != len(want) || err != nil {
		t.Fatalf("Write: %d, %v; want %d, nil", n, err, len(want))
	}
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("the peer read %d bytes, not what was written", len(b))
	}

	server.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := rw.Read(make([]byte, 10))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v; want a timeout", err)
	}
	// The text net's own read gives, which answers and the log quote.
	server.SetReadDeadline(time.Now().Add(time.Millisecond))
	_, netErr := server.Read(make([]byte, 10))
	if err.Error() != netErr.Error() {
		t.Errorf("Read past the deadline: %q; net's own read says %q", err, netErr)
	}
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	client.Write([]byte("hello"))
	client.Close()
	b, err := io.ReadAll(rw)
	if string(b) != "hello" || err != nil {
		t.Fatalf("ReadAll: %q, %v; want \"hello\" then EOF", b, err)
	}
}

// TestRawIOAllocations: a raw read or write allocates nothing (every plain-HTTP
// request makes several of each).
func TestRawIOAllocations(t *testing.T) {
	client, server := tcpPair(t)
	rw := newRawIO(server)
	client.SetDeadline(time.Now().Add(10 * time.Second))
	server.SetDeadline(time.Now().Add(10 * time.Second))
	msg, buf := []byte("ping"), make([]byte, 16)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := rw.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(client, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
		if _, err := client.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(rw, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("a raw write and read took %v allocations; want 0", allocs)
	}
}

// TestRawIOReadsAfterShortAndFullReads: every read gets the bytes that are there,
// whether the read before it filled its buffer or not, and whether they came
// before the read or while it waited. A read cannot wait for the poller before
// trying its system call, even after one that left the socket empty: the runtime
// clears the poller's mark of bytes that came in between when a read starts
// (tried, and this test hung on the read of "later").
func TestRawIOReadsAfterShortAndFullReads(t *testing.T) {
	client, server := tcpPair(t)
	rw := newRawIO(server)
	read := func(n int) string {
		t.Helper()
		server.SetReadDeadline(time.Now().Add(2 * time.Second))
		b := make([]byte, n)
		m, err := rw.Read(b)
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		return string(b[:m])
	}
	client.Write([]byte("0123456789abcdef"))
	time.Sleep(20 * time.Millisecond)
	if got := read(10); got != "0123456789" {
		t.Fatalf("a full read: %q", got)
	}
	if got := read(64); got != "abcdef" {
		t.Fatalf("the rest, left in the socket: %q", got)
	}
	// A short read drained the socket: bytes written before the next read, and
	// bytes written while it waits, both arrive.
	client.Write([]byte("later"))
	time.Sleep(20 * time.Millisecond)
	if got := read(64); got != "later" {
		t.Fatalf("bytes that came after a short read: %q", got)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		client.Write([]byte("waited"))
	}()
	if got := read(64); got != "waited" {
		t.Fatalf("bytes that came while the read waited: %q", got)
	}
}
