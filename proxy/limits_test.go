package proxy

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestHalfClosedTunnelClosed: a client that ends its direction while the origin
// ignores the FIN has its tunnel closed after the half-closed timeout.
func TestHalfClosedTunnelClosed(t *testing.T) {
	stop := make(chan struct{})
	origin := startRawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		io.Copy(io.Discard, br) // until the client's FIN
		<-stop                  // and then nothing: no answer, no close
	})
	t.Cleanup(func() { close(stop) })
	log := &syncBuffer{}
	_, addr := serveProxy(t, Options{HalfCloseTimeout: 200 * time.Millisecond, Logger: slog.New(slog.NewJSONHandler(log, nil))}, origin.addr())
	c, br := rawRequest(t, addr, "CONNECT "+origin.addr()+" HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v, %v", resp, err)
	}
	start := time.Now()
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the half-closed timeout: %v; want the tunnel closed", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("closed after %v; want about 200ms", took)
	}
	if !waitFor(func() bool { return strings.Contains(log.String(), `"closed":"half_closed"`) }) {
		t.Errorf("access log lacks closed=half_closed:\n%s", log.String())
	}
}

// TestFileBudgetStopsAccepting: at its file-descriptor budget the proxy stops
// accepting (connections wait in the backlog) and goes on once one closes; idle
// connections that never sent a request count.
func TestFileBudgetStopsAccepting(t *testing.T) {
	origin := startRawOrigin(t, serveN(10, func(*http.Request, int) string { return okAnswer("ok") }))
	p, addr := serveProxy(t, Options{FileLimit: fdReserve + 32}, origin.addr()) // room for 16
	var idle []net.Conn
	for range p.maxOpen {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	if !waitFor(func() bool { return p.conns.Load() == p.maxOpen }) {
		t.Fatalf("%d connections counted; want %d", p.conns.Load(), p.maxOpen)
	}
	got := make(chan int, 1)
	go func() {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			got <- 0
			return
		}
		defer c.Close()
		io.WriteString(c, "GET http://"+origin.addr()+"/ HTTP/1.1\r\nHost: x\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			got <- -1
			return
		}
		got <- resp.StatusCode
	}()
	select {
	case s := <-got:
		t.Fatalf("a connection past the budget was served (%d)", s)
	case <-time.After(300 * time.Millisecond):
	}
	idle[0].Close()
	select {
	case s := <-got:
		if s != 200 {
			t.Errorf("once a connection closed: %d; want 200", s)
		}
	case <-time.After(3 * time.Second):
		t.Error("the waiting connection was never served after one closed")
	}
}

// failingListener fails its first Accept as a process out of descriptors does.
type failingListener struct {
	net.Listener
	failed atomic.Bool
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.failed.CompareAndSwap(false, true) {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	return l.Listener.Accept()
}

// TestAcceptErrorsCountedAndLogged: accept failures are warnings and a metric, and
// the listener goes on.
func TestAcceptErrorsCountedAndLogged(t *testing.T) {
	log := &syncBuffer{}
	p, err := New(Options{Logger: slog.New(slog.NewJSONHandler(log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	p.SetPolicy(compileRules(t))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(&failingListener{Listener: ln})
	t.Cleanup(p.close)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil {
		t.Fatalf("after an accept error: %v; want the listener to go on", err)
	}
	if n := testutil.ToFloat64(p.metrics.acceptErrors); n != 1 {
		t.Errorf("egressd_accept_errors_total = %v; want 1", n)
	}
	if !strings.Contains(log.String(), `"level":"WARN","msg":"proxy listener cannot accept"`) {
		t.Errorf("no warning for the accept error:\n%s", log.String())
	}
}

// TestMemoryReturnedAfterBurst: once the connections of a burst (at least
// burstConns at once) have closed down to half, the proxy asks the runtime to
// return memory, once; a small load never does.
func TestMemoryReturnedAfterBurst(t *testing.T) {
	e := startRawOrigin(t, echoLines("")).addr()
	var returned atomic.Int32
	p, err := New(Options{MaxConnections: 4 * burstConns, ReturnMemory: func() { returned.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	p.memoryCheck = 20 * time.Millisecond
	p.SetPolicy(compileRules(t, e))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(ln)
	defer p.close()
	open := func(n int) []net.Conn {
		var cs []net.Conn
		for range n {
			c, br := rawRequest(t, ln.Addr().String(), "CONNECT "+e+" HTTP/1.1\r\n\r\nx\n")
			if resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %v, %v", resp, err)
			}
			if line, err := br.ReadString('\n'); line != "x\n" {
				t.Fatalf("through the tunnel: %q, %v", line, err)
			}
			cs = append(cs, c)
		}
		return cs
	}
	closeAll := func(cs []net.Conn) {
		for _, c := range cs {
			c.Close()
		}
	}
	small := open(burstConns / 4)
	closeAll(small)
	time.Sleep(200 * time.Millisecond)
	if n := returned.Load(); n != 0 {
		t.Fatalf("memory returned %d times after %d connections; want none", n, burstConns/4)
	}
	burst := open(burstConns + 10)
	time.Sleep(100 * time.Millisecond)
	if n := returned.Load(); n != 0 {
		t.Fatalf("memory returned %d times while the burst is open; want none", n)
	}
	closeAll(burst)
	if !waitFor(func() bool { return returned.Load() == 1 }) {
		t.Fatalf("memory returned %d times after the burst closed; want once", returned.Load())
	}
	time.Sleep(200 * time.Millisecond)
	if n := returned.Load(); n != 1 {
		t.Errorf("memory returned %d times; want once per burst", n)
	}
}
