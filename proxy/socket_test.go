//go:build linux

package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startedPoller returns a running poller, stopped at the test's end.
func startedPoller(t *testing.T) *poller {
	t.Helper()
	pls := newPollers(1)
	if len(pls) == 0 {
		t.Skip("no epoll")
	}
	go pls[0].run()
	t.Cleanup(pls[0].stop)
	return pls[0]
}

// TestConnectSocket: a tunnel's upstream dialled as a bare socket carries bytes,
// and a refused or unanswered connection fails as net.Dialer's would, in words and
// in kind, leaving no socket open.
func TestConnectSocket(t *testing.T) {
	pl := startedPoller(t)
	before := openSockets(t)

	t.Run("connects", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		s, err := pl.connect(context.Background(), netip.MustParseAddrPort(ln.Addr().String()))
		if err != nil {
			t.Fatal(err)
		}
		defer s.close()
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if n, err := pl.writeAll(s, []byte("hello"), time.Second); n != 5 || err != nil {
			t.Fatalf("writeAll: %d, %v", n, err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got := make([]byte, 5)
		if _, err := io.ReadFull(c, got); err != nil || string(got) != "hello" {
			t.Fatalf("origin read %q, %v", got, err)
		}
		if v, err := unix.GetsockoptInt(s.fd, unix.IPPROTO_TCP, unix.TCP_NODELAY); err != nil || v == 0 {
			t.Errorf("TCP_NODELAY %d, %v; want set, as net.Dialer sets it", v, err)
		}
	})

	t.Run("refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close() // nothing listens there now
		_, want := (&net.Dialer{}).Dial("tcp", addr)
		s, err := pl.connect(context.Background(), netip.MustParseAddrPort(addr))
		if err == nil {
			s.close()
			t.Fatal("connected to a closed port")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) || want == nil || err.Error() != want.Error() {
			t.Errorf("error %q; want net.Dialer's %q, an ECONNREFUSED", err, want)
		}
	})

	t.Run("waits", func(t *testing.T) {
		ln, full := fullListener(t)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		s, err := pl.connect(ctx, ln)
		if err == nil {
			s.close()
			t.Fatal("connected past a full accept queue")
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() || !strings.HasSuffix(err.Error(), ": i/o timeout") {
			t.Errorf("error %q; want a timeout, as net.Dialer's", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("gave up after %v; want about 300ms", took)
		}

		// A connection that is not made within connect is made once the queue has
		// room: the wait in the poller ends with it.
		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s, err := pl.connect(ctx, ln)
			if err == nil {
				s.close()
			}
			done <- err
		}()
		time.Sleep(100 * time.Millisecond) // the SYN is dropped meanwhile
		full()                             // the queue empties; the SYN is sent again within a few seconds
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("connect after the queue emptied: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("connect did not end")
		}
	})

	if after := openSockets(t); after != before {
		t.Errorf("%d sockets open after the connects; %d before", after, before)
	}
}

// fullListener returns the address of a listener on loopback whose accept queue is
// full, so that a SYN to it is dropped, and a function that empties the queue and
// accepts from then on.
func fullListener(t *testing.T) (netip.AddrPort, func()) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil { // a queue of one
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))
	var fillers []net.Conn
	for range 4 { // connections the queue takes, until it takes no more
		c, err := net.DialTimeout("tcp", ap.String(), 200*time.Millisecond)
		if err != nil {
			break
		}
		fillers = append(fillers, c)
	}
	accepting := func() {
		go func() {
			for {
				nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
				if err != nil {
					return
				}
				unix.Close(nfd)
			}
		}()
	}
	t.Cleanup(func() {
		unix.Shutdown(fd, unix.SHUT_RDWR) // ends a blocked accept
		unix.Close(fd)
		for _, c := range fillers {
			c.Close()
		}
	})
	return ap, accepting
}

// TestBareClientSockets: a client accepted as a bare socket is the same client to
// everything after: its address in the access log, as net prints it, on IPv4 and
// IPv6; a CONNECT head that comes in pieces after the accept, waited for in the
// poller; a refusal written whole; a plain request handed to net/http; and when
// the proxy closes, the listening socket closes with it (the duplicate it accepts
// on included), so connections are refused, not queued.
func TestBareClientSockets(t *testing.T) {
	origin := startRawOrigin(t, echoThenBye)
	for _, network := range []string{"127.0.0.1:0", "[::1]:0"} {
		ln, err := net.Listen("tcp", network)
		if err != nil {
			t.Logf("%s: %v", network, err)
			continue
		}
		log := &syncBuffer{}
		p, err := New(Options{Logger: slog.New(slog.NewJSONHandler(log, nil))})
		if err != nil {
			t.Fatal(err)
		}
		p.SetPolicy(compileRules(t, origin.addr()))
		served := make(chan error, 1)
		go func() { served <- p.Serve(ln) }()
		addr := ln.Addr().String()

		// The head in three pieces, the first after the accept.
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(c)
		for _, piece := range []string{"CONNECT " + origin.addr(), " HTTP/1.1\r\nHost: ", origin.addr() + "\r\n\r\nearly\n"} {
			time.Sleep(50 * time.Millisecond)
			io.WriteString(c, piece)
		}
		if resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: CONNECT in pieces: %v, %v", network, resp, err)
		}
		expectLine(t, c, br, "echo early\n")
		c.(*net.TCPConn).CloseWrite()
		expectLine(t, c, br, "bye after 1\n")
		client := c.LocalAddr().String()
		c.Close()
		if line := tunnelLogLine(t, log, origin.addr()); line["client"] != client {
			t.Errorf("%s: access log client %v; want %s", network, line["client"], client)
		}

		// A refusal, whole, and the connection's end.
		c, br = rawRequest(t, addr, "CONNECT denied.invalid:443 HTTP/1.1\r\nHost: denied.invalid:443\r\n\r\n")
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != http.StatusForbidden || resp.Header.Get(headerDenied) != "not on the allowlist" {
			t.Fatalf("%s: denied CONNECT: %v, %v", network, resp, err)
		}
		if rest, err := io.ReadAll(br); err != nil || !strings.HasPrefix(string(rest), "egressd: denied") {
			t.Errorf("%s: denial body %q, %v; want the reason, then the end", network, rest, err)
		}

		// A plain request goes to net/http, which sees the client's address too.
		c, br = rawRequest(t, addr, "GET http://denied.invalid/ HTTP/1.1\r\nHost: denied.invalid\r\n\r\n")
		if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("%s: plain GET: %v, %v", network, resp, err)
		}
		client = c.LocalAddr().String()
		if !waitFor(func() bool { return strings.Contains(log.String(), `"client":"`+client+`","method":"GET"`) }) {
			t.Errorf("%s: no access log line for the GET from %s:\n%s", network, client, log.String())
		}

		p.close()
		select {
		case <-served:
		case <-time.After(5 * time.Second):
			t.Fatal("Serve did not return after close")
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s: a connection to the closed proxy was taken; want it refused", network)
		}
	}
}

// TestWriteAllWaits: a write to a socket whose peer does not read waits in the
// poller for room, gives up at its timeout with what it wrote counted, and, with a
// reader, writes the whole of a piece far larger than the socket's buffers.
func TestWriteAllWaits(t *testing.T) {
	pl := startedPoller(t)
	client, peer := tcpPair(t)
	client.SetWriteBuffer(4096)
	s, err := detach(client)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB

	start := time.Now()
	n, err := pl.writeAll(s, big, 200*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) || n == 0 || n >= len(big) {
		t.Fatalf("writeAll to a peer that reads nothing: %d bytes, %v; want part, then the timeout", n, err)
	}
	if took := time.Since(start); took < 150*time.Millisecond || took > 2*time.Second {
		t.Errorf("gave up after %v; want about 200ms", took)
	}

	got := make(chan int, 1)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- len(b)
	}()
	m, err := pl.writeAll(s, big[n:], 5*time.Second)
	if err != nil || m != len(big)-n {
		t.Fatalf("writeAll with a reader: %d of %d bytes, %v", m, len(big)-n, err)
	}
	rawShutdown(s.fd, unix.SHUT_WR)
	select {
	case total := <-got:
		if total != len(big) {
			t.Errorf("the peer read %d bytes; want %d", total, len(big))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the peer did not read to the end")
	}
}

// TestNetConnAtTheFileLimit: where net.FileConn cannot duplicate a socket's
// descriptor (the process is at its file limit), the socket still becomes a
// working net.Conn, an *os.File of its own descriptor, so a tunnel that goes to
// copiers there loses nothing. It runs in a child process of its own, whose file
// limit it spends.
func TestNetConnAtTheFileLimit(t *testing.T) {
	if os.Getenv("EGRESSD_TEST_FILE_LIMIT") != "1" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestNetConnAtTheFileLimit$", "-test.v")
		cmd.Env = append(os.Environ(), "EGRESSD_TEST_FILE_LIMIT=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestNetConnAtTheFileLimit") {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return
	}
	a, b := tcpPair(t)
	s, err := detach(a)
	if err != nil {
		t.Fatal(err)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	lim.Cur = 64
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	var held []int
	for range 64 { // every descriptor left, bounded by the limit
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			break
		}
		held = append(held, fd)
	}
	if _, err := unix.Dup(s.fd); !errors.Is(err, unix.EMFILE) {
		t.Fatalf("a duplicate at the limit: %v; want EMFILE", err)
	}
	c, err := s.netConn(nil, nil)
	for _, fd := range held {
		unix.Close(fd)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(fileConn); !ok {
		t.Fatalf("at the file limit the net.Conn is a %T; want a fileConn", c)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(b, got); err != nil || string(got) != "ping\n" {
		t.Fatalf("the peer read %q, %v", got, err)
	}
	io.WriteString(b, "pong\n")
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "pong\n" {
		t.Fatalf("read %q, %v through the fileConn", got, err)
	}
	if err := c.(fileConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Read(got); n != 0 || err != io.EOF {
		t.Errorf("after CloseWrite the peer read %d, %v; want the end", n, err)
	}
}
