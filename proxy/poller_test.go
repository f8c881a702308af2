//go:build linux

package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openTunnel opens a tunnel to target through the proxy at addr.
func openTunnel(t *testing.T, addr, target string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, br := rawRequest(t, addr, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n")
	if resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT %s: %v, %v", target, resp, err)
	}
	return c, br
}

// serveLogged serves a Proxy made with opts that allows origin and writes its log,
// in JSON, to the returned buffer.
func serveLogged(t *testing.T, opts Options, origin string) (*Proxy, string, *syncBuffer) {
	t.Helper()
	log := &syncBuffer{}
	opts.Logger = slog.New(slog.NewJSONHandler(log, nil))
	p, addr := serveProxy(t, opts, origin)
	return p, addr, log
}

// tunnelLogLine waits for the access log line of the tunnel to target and returns it.
func tunnelLogLine(t *testing.T, log *syncBuffer, target string) map[string]any {
	t.Helper()
	var line map[string]any
	found := waitFor(func() bool {
		for _, l := range strings.Split(log.String(), "\n") {
			if strings.Contains(l, `"method":"CONNECT"`) && strings.Contains(l, `"target":"`+target+`"`) {
				return json.Unmarshal([]byte(l), &line) == nil
			}
		}
		return false
	})
	if !found {
		t.Fatalf("no access log line for the tunnel to %s:\n%s", target, log.String())
	}
	return line
}

// TestPolledTunnelSmallPieces: the pieces of a request-and-answer tunnel go both
// ways in order, the client's end arrives at the origin as a half-close while the
// origin's answer still comes back, and the access log counts every byte.
func TestPolledTunnelSmallPieces(t *testing.T) {
	origin := startRawOrigin(t, echoThenBye)
	_, addr, log := serveLogged(t, Options{}, origin.addr())
	c, br := openTunnel(t, addr, origin.addr())
	c.SetDeadline(time.Now().Add(5 * time.Second))
	up, down := 0, 0
	for i := range 50 {
		msg := fmt.Sprintf("piece %d %s\n", i, strings.Repeat("x", i*37))
		io.WriteString(c, msg)
		up += len(msg)
		got, err := br.ReadString('\n')
		if err != nil || got != "echo "+msg {
			t.Fatalf("piece %d: read %q, %v; want %q", i, got, err, "echo "+msg)
		}
		down += len(got)
	}
	c.(*net.TCPConn).CloseWrite()
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "bye after 50\n" {
		t.Fatalf("after the half-close: %q, %v; want the origin's last words, then the end", rest, err)
	}
	down += len(rest)
	line := tunnelLogLine(t, log, origin.addr())
	if line["bytes_up"] != float64(up) || line["bytes_down"] != float64(down) || line["closed"] != closeDone {
		t.Errorf("access log: up %v, down %v, closed %v; want %d, %d, %s", line["bytes_up"], line["bytes_down"], line["closed"], up, down, closeDone)
	}
}

// TestPolledTunnelBulk: a bulk upload (reads that fill the poller's buffer) and a
// bulk download go on, whole and in order, on copier goroutines that take over from
// the poller.
func TestPolledTunnelBulk(t *testing.T) {
	const size = 5<<20 + 3
	payload := bytes.Repeat([]byte("0123456789abcdef"), size/16+1)[:size]
	origin := startRawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		h := sha256.New()
		if n, err := io.CopyN(h, br, size); err != nil {
			fmt.Fprintf(c, "short upload: %d, %v\n", n, err)
			return
		}
		fmt.Fprintf(c, "%x\n", h.Sum(nil))
		c.Write(payload)
	})
	_, addr, log := serveLogged(t, Options{}, origin.addr())
	c, br := openTunnel(t, addr, origin.addr())
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go c.Write(payload)
	sum, err := br.ReadString('\n')
	if want := fmt.Sprintf("%x\n", sha256.Sum256(payload)); err != nil || sum != want {
		t.Fatalf("origin's digest of the upload: %q, %v; want %q", sum, err, want)
	}
	got, err := io.ReadAll(br)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("download: %d bytes, %v; want the %d sent", len(got), err, len(payload))
	}
	c.Close()
	line := tunnelLogLine(t, log, origin.addr())
	if line["bytes_up"] != float64(size) || line["bytes_down"] != float64(len(sum)+size) {
		t.Errorf("access log: up %v, down %v; want %d, %d", line["bytes_up"], line["bytes_down"], size, len(sum)+size)
	}
}

// TestPollerHandsPendingToCopier: small pieces for a destination whose socket is
// full (a small send buffer, a peer that does not read for a while) make a write
// that takes only part of a piece, or none; the rest of that piece goes to the copier
// that takes over, before anything else, and nothing is lost.
func TestPollerHandsPendingToCopier(t *testing.T) {
	pls := newPollers(1)
	if len(pls) == 0 {
		t.Skip("no epoll")
	}
	pl := pls[0]
	go pl.run()
	defer pl.stop()
	function, client := tcpPair(t) // the function's end, and egressd's
	upstream, origin := tcpPair(t) // egressd's end, and the origin's
	client.SetWriteBuffer(4096)    // full after a few pieces the function does not read
	ended := make(chan *tunnel, 1)
	tn := &tunnel{client: client, upstream: upstream, end: func(t *tunnel) { ended <- t }}
	tn.running.Store(2)
	if !pl.attach(tn) {
		t.Fatal("attach refused two TCP connections")
	}
	tn.start()

	const pieces, piece = 400, 1000
	go func() {
		for i := range pieces {
			if _, err := origin.Write(bytes.Repeat([]byte{byte(i)}, piece)); err != nil {
				return
			}
			time.Sleep(20 * time.Microsecond) // about one piece per read of the poller
		}
		origin.CloseWrite()
	}()
	time.Sleep(300 * time.Millisecond) // the pieces fill the sockets meanwhile
	if copiers := goroutinesIn("copyUpstreamToClient"); copiers != 1 {
		t.Errorf("%d copiers took over the full direction; want 1", copiers)
	}
	function.SetDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(function) // ends at the origin's half-close, passed on
	if err != nil {
		t.Fatalf("reading: %d bytes, %v", len(got), err)
	}
	want := make([]byte, 0, pieces*piece)
	for i := range pieces {
		want = append(want, bytes.Repeat([]byte{byte(i)}, piece)...)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for i < min(len(got), len(want)) && got[i] == want[i] {
			i++
		}
		t.Fatalf("read %d bytes, want %d; first difference at byte %d", len(got), len(want), i)
	}
	function.Close() // the other direction ends: the tunnel with it
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the tunnel did not end after both directions did")
	}
	// Counted once the copier is done: it adds its count after passing the
	// origin's half-close on, which the function may have read already.
	if n := tn.down.Load(); n != int64(len(want)) {
		t.Errorf("counted %d bytes down; want %d", n, len(want))
	}
}

// TestIdleTunnelsHoldNoGoroutines: tunnels that have carried a request and its
// answer and wait hold no goroutine of their own (the poller moves their bytes),
// and revoking them closes them all and logs each.
func TestIdleTunnelsHoldNoGoroutines(t *testing.T) {
	origin := startRawOrigin(t, echoLines("echo "))
	p, addr, log := serveLogged(t, Options{CloseRevokedTunnels: true}, origin.addr())
	const n = 100
	var brs []*bufio.Reader
	for i := range n {
		c, br := openTunnel(t, addr, origin.addr())
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "hello %d\n", i)
		if line, err := br.ReadString('\n'); err != nil || line != fmt.Sprintf("echo hello %d\n", i) {
			t.Fatalf("tunnel %d: %q, %v", i, line, err)
		}
		brs = append(brs, br)
	}
	if copiers := goroutinesIn("copyClientToUpstream", "copyUpstreamToClient"); copiers != 0 {
		t.Errorf("%d idle tunnels have %d copier goroutines; want none", n, copiers)
	}
	p.SetPolicy(compileRules(t, "other.example.com"))
	for i, br := range brs {
		if _, err := br.ReadByte(); err != io.EOF {
			t.Fatalf("tunnel %d after its rule went: %v; want it closed", i, err)
		}
	}
	if !waitFor(func() bool { return strings.Count(log.String(), `"closed":"revoked"`) == n }) {
		t.Errorf("%d access log lines with closed=revoked; want %d", strings.Count(log.String(), `"closed":"revoked"`), n)
	}
}

// expectLine reads a line through the tunnel c, within 5 s from now (the deadline
// stays), and fails t unless it is want.
func expectLine(t *testing.T, c net.Conn, br *bufio.Reader, want string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if line, err := br.ReadString('\n'); err != nil || line != want {
		t.Fatalf("through the tunnel: %q, %v; want %q", line, err, want)
	}
}

// goroutinesIn counts the goroutines whose stacks have any of the functions named.
func goroutinesIn(funcs ...string) int {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, f := range funcs {
			if strings.Contains(g, "proxy."+f+"(") {
				n++
				break
			}
		}
	}
	return n
}

// TestTunnelsConcurrentRandomTraffic: many tunnels at once, each with its own
// pattern of pieces (a byte to 40 KiB, some bursts of several pieces before reading)
// echoed by the origin, some ending with a half-close and some with a close: every
// byte comes back to its own tunnel, in order, whichever of the poller and the
// copiers moved it, and every tunnel is logged with its counts.
func TestTunnelsConcurrentRandomTraffic(t *testing.T) {
	origin := startRawOrigin(t, func(c net.Conn, br *bufio.Reader) { io.Copy(c, br) })
	_, addr, log := serveLogged(t, Options{}, origin.addr())
	const tunnels = 48
	errs := make(chan error, tunnels)
	for i := range tunnels {
		go func() { errs <- randomTraffic(addr, origin.addr(), uint64(i)) }()
	}
	for range tunnels {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if !waitFor(func() bool { return strings.Count(log.String(), `"method":"CONNECT"`) == tunnels }) {
		t.Fatalf("%d tunnels logged; want %d", strings.Count(log.String(), `"method":"CONNECT"`), tunnels)
	}
	for _, l := range strings.Split(strings.TrimSpace(log.String()), "\n") {
		var line map[string]any
		if json.Unmarshal([]byte(l), &line) != nil || line["method"] != "CONNECT" {
			continue
		}
		if line["status"] != float64(200) || line["bytes_up"] != line["bytes_down"] {
			t.Errorf("an echo tunnel logged status %v, %v bytes up and %v down; want 200 and equal counts", line["status"], line["bytes_up"], line["bytes_down"])
		}
	}
}

// randomTraffic opens a tunnel to an echo origin and checks that what it sends, in
// pieces drawn from seed, comes back.
func randomTraffic(addr, target string, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 7))
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %[1]s\r\n\r\n", target)
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Errorf("tunnel %d: CONNECT: %v, %v", seed, resp, err)
	}
	var sent, got []byte
	for round := range 1 + rng.IntN(12) {
		var burst []byte
		for range 1 + rng.IntN(4) {
			size := 1 + rng.IntN(64)
			if rng.IntN(4) == 0 {
				size = 1 + rng.IntN(40<<10)
			}
			piece := make([]byte, size)
			for i := range piece {
				piece[i] = byte(rng.Uint32())
			}
			if _, err := c.Write(piece); err != nil {
				return fmt.Errorf("tunnel %d round %d: write: %v", seed, round, err)
			}
			burst = append(burst, piece...)
		}
		back := make([]byte, len(burst))
		if _, err := io.ReadFull(br, back); err != nil {
			return fmt.Errorf("tunnel %d round %d: read %d bytes: %v", seed, round, len(burst), err)
		}
		sent, got = append(sent, burst...), append(got, back...)
	}
	if !bytes.Equal(sent, got) {
		return fmt.Errorf("tunnel %d: %d bytes came back different from the %d sent", seed, len(got), len(sent))
	}
	if rng.IntN(2) == 0 { // half-close: the origin's end comes back as the tunnel's end
		c.(*net.TCPConn).CloseWrite()
		if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
			return fmt.Errorf("tunnel %d after its half-close: %q, %v; want the end", seed, rest, err)
		}
	}
	return nil
}

// TestPolledTunnelClientReset: a client that resets its connection while the origin
// is still sending ends the tunnel: the origin's connection is closed and the tunnel
// is logged.
func TestPolledTunnelClientReset(t *testing.T) {
	originGone := make(chan error, 1)
	origin := startRawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		for i := 0; i < 100000; i++ { // bounded: about 10 s at most
			if _, err := c.Write([]byte("tick\n")); err != nil {
				originGone <- err
				return
			}
			time.Sleep(100 * time.Microsecond)
		}
		originGone <- nil
	})
	_, addr, log := serveLogged(t, Options{}, origin.addr())
	c, br := openTunnel(t, addr, origin.addr())
	expectLine(t, c, br, "tick\n")
	c.(*net.TCPConn).SetLinger(0)
	c.Close() // a reset
	select {
	case err := <-originGone:
		if err == nil {
			t.Fatal("the origin wrote for 10 s; want its connection closed after the client's reset")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the origin's connection stayed open after the client's reset")
	}
	tunnelLogLine(t, log, origin.addr())
}

// TestPolledTunnelOriginReset: an origin that resets its connection ends the tunnel
// at once, even while the client is silent: the client sees its connection end.
func TestPolledTunnelOriginReset(t *testing.T) {
	origin := startRawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		io.WriteString(c, "bye\n")
		time.Sleep(50 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0) // the close below is a reset
	})
	_, addr, log := serveLogged(t, Options{}, origin.addr())
	c, br := openTunnel(t, addr, origin.addr())
	expectLine(t, c, br, "bye\n")
	start := time.Now()
	if _, err := br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("after the origin's reset: %v; want the client's connection ended", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the client's connection ended %v after the origin's reset; want at once", d)
	}
	tunnelLogLine(t, log, origin.addr())
}

// TestSocketClosesAfterItsLastUse: a polled tunnel's descriptor stays open, the same
// socket, while a call uses it, however the tunnel is closed meanwhile; it closes
// when that call is done, once, and no call starts on it after the close.
func TestSocketClosesAfterItsLastUse(t *testing.T) {
	s := detachedSocket(t)
	var want unix.Stat_t
	if err := unix.Fstat(s.fd, &want); err != nil {
		t.Fatal(err)
	}
	same := func() bool { // the descriptor is open on the same socket
		var st unix.Stat_t
		return unix.Fstat(s.fd, &st) == nil && st.Ino == want.Ino && st.Dev == want.Dev
	}
	if !s.use() || !s.use() {
		t.Fatal("use of an open socket refused")
	}
	s.close()
	s.close() // a second close (a sweep after a revocation) changes nothing
	if s.use() {
		t.Fatal("use after close allowed")
	}
	s.done()
	if !same() {
		t.Fatal("closed while a call still used it")
	}
	s.done()
	if same() {
		t.Fatal("still open after the last use")
	}
}

// openSockets is the number of this process's descriptors that are sockets (not the
// pipes that net keeps for splice, in a pool of its own).
func openSockets(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if target, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && strings.HasPrefix(target, "socket:") {
			n++
		}
	}
	return n
}

// TestPolledTunnelsLeaveNoDescriptors: whichever way a tunnel ends (both sides done,
// a bulk transfer handed to copiers, a revocation, a client's reset), every
// socket descriptor it held, its own and its copiers', is closed.
func TestPolledTunnelsLeaveNoDescriptors(t *testing.T) {
	const bulk = 1 << 20
	origin := startRawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		line, err := br.ReadString('\n')
		switch {
		case err != nil:
		case line == "bulk\n":
			c.Write(make([]byte, bulk))
			io.Copy(io.Discard, br)
		default:
			io.WriteString(c, "echo "+line)
			io.Copy(io.Discard, br)
		}
	})
	p, addr, log := serveLogged(t, Options{CloseRevokedTunnels: true}, origin.addr())
	// A first tunnel starts the pollers and the listeners' lasting descriptors.
	c, br := openTunnel(t, addr, origin.addr())
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "warm\n")
	expectLine(t, c, br, "echo warm\n")
	c.Close()
	if !waitFor(func() bool { return strings.Count(log.String(), `"method":"CONNECT"`) == 1 }) {
		t.Fatal("the first tunnel did not end")
	}
	before := openSockets(t)

	var held []net.Conn
	for i := range 30 {
		c, br := openTunnel(t, addr, origin.addr())
		c.SetDeadline(time.Now().Add(5 * time.Second))
		switch i % 3 {
		case 0: // a request and its answer, then the client's end
			fmt.Fprintf(c, "hello %d\n", i)
			expectLine(t, c, br, fmt.Sprintf("echo hello %d\n", i))
			c.Close()
		case 1: // a download: the poller hands the direction to a copier
			io.WriteString(c, "bulk\n")
			if n, err := io.CopyN(io.Discard, br, bulk); err != nil {
				t.Fatalf("tunnel %d: downloaded %d bytes, %v", i, n, err)
			}
			if i%2 == 0 {
				c.(*net.TCPConn).SetLinger(0) // a reset
			}
			c.Close()
		case 2: // left open, for the revocation
			fmt.Fprintf(c, "hello %d\n", i)
			expectLine(t, c, br, fmt.Sprintf("echo hello %d\n", i))
			held = append(held, c)
		}
	}
	p.SetPolicy(compileRules(t, "other.example.com"))
	for _, c := range held {
		c.Close()
	}
	if !waitFor(func() bool { return strings.Count(log.String(), `"method":"CONNECT"`) == 31 }) {
		t.Fatalf("%d of 31 tunnels logged as ended", strings.Count(log.String(), `"method":"CONNECT"`))
	}
	if !waitFor(func() bool { return openSockets(t) <= before }) {
		t.Errorf("%d sockets open after the tunnels ended; %d before", openSockets(t), before)
	}
}

// TestTunnelLeavesPollerWhole: when a bulk transfer takes one direction of a polled
// tunnel to a copier, the other direction goes too, and the tunnel holds one
// descriptor per end again (as the file-descriptor budget counts), with both
// directions still moving bytes.
func TestTunnelLeavesPollerWhole(t *testing.T) {
	const bulk = 1 << 20
	origin := startRawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if line == "bulk\n" {
				c.Write(make([]byte, bulk))
				continue
			}
			io.WriteString(c, "echo "+line)
		}
	})
	_, addr, _ := serveLogged(t, Options{}, origin.addr())
	c, br := openTunnel(t, addr, origin.addr())
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "first\n")
	expectLine(t, c, br, "echo first\n")
	// The test's client and the origin's connection, and egressd's two ends.
	polled := openSockets(t)
	io.WriteString(c, "bulk\n")
	if n, err := io.CopyN(io.Discard, br, bulk); err != nil {
		t.Fatalf("downloaded %d bytes, %v", n, err)
	}
	if copiers := goroutinesIn("copyClientToUpstream", "copyUpstreamToClient"); copiers != 2 {
		t.Errorf("%d copier goroutines after the bulk transfer; want 2 (the tunnel leaves the poller whole)", copiers)
	}
	if !waitFor(func() bool { return openSockets(t) == polled }) {
		t.Errorf("%d sockets open with the tunnel on copiers; %d while it was polled", openSockets(t), polled)
	}
	for i := range 3 {
		fmt.Fprintf(c, "after %d\n", i)
		expectLine(t, c, br, fmt.Sprintf("echo after %d\n", i))
	}
}

// TestSocketTake: take gives the descriptor away once the calls in progress are
// done; no call starts on it after, and neither their end nor a close closes it.
func TestSocketTake(t *testing.T) {
	s := detachedSocket(t)
	if !s.use() {
		t.Fatal("use of an open socket refused")
	}
	taken := make(chan int)
	go func() {
		fd, ok := s.take()
		if !ok {
			fd = -1
		}
		taken <- fd
	}()
	select {
	case <-taken:
		t.Fatal("take returned while a call still used the descriptor")
	case <-time.After(50 * time.Millisecond):
	}
	if s.use() {
		t.Fatal("use allowed once take has begun")
	}
	s.done()
	fd := <-taken
	if fd != s.fd {
		t.Fatalf("take gave %d; want %d", fd, s.fd)
	}
	s.close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatalf("the taken descriptor was closed: %v", err)
	}
	if _, ok := s.take(); ok {
		t.Error("a second take succeeded")
	}
	unix.Close(fd)
}

// detachedSocket is a socket detached from a loopback connection that stays open
// for the test.
func detachedSocket(t *testing.T) *socket {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := detach(c.(*net.TCPConn))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestUnwatchableTunnelGoesToCopiers: a tunnel whose first socket the epoll
// instance refuses (here: the pollers stopped, their instances closed) has nothing
// in the poller's hands, and both directions go to copiers: it still carries bytes
// both ways and passes the half-close on.
func TestUnwatchableTunnelGoesToCopiers(t *testing.T) {
	origin := startRawOrigin(t, echoThenBye)
	p, addr, log := serveLogged(t, Options{}, origin.addr())
	p.nextPoller()
	p.stopPollers()
	c, br := openTunnel(t, addr, origin.addr())
	c.SetDeadline(time.Now().Add(5 * time.Second))
	for i := range 3 {
		fmt.Fprintf(c, "line %d\n", i)
		expectLine(t, c, br, fmt.Sprintf("echo line %d\n", i))
	}
	c.(*net.TCPConn).CloseWrite()
	expectLine(t, c, br, "bye after 3\n")
	c.Close()
	if line := tunnelLogLine(t, log, origin.addr()); line["closed"] != closeDone {
		t.Errorf("access log: closed %v; want %s", line["closed"], closeDone)
	}
}

// echoThenBye is an origin that echoes each line and, after the client's
// half-close, says how many lines it had.
func echoThenBye(c net.Conn, br *bufio.Reader) {
	n := 0
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			fmt.Fprintf(c, "bye after %d\n", n)
			return
		}
		n++
		io.WriteString(c, "echo "+line)
	}
}
