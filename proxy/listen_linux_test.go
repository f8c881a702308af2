package proxy

import (
	"net"
	"testing"
	"time"
)

// TestListenDefersAccept: the proxy's listener hands over a connection only once
// its client has sent something; the transparent one at once.
func TestListenDefersAccept(t *testing.T) {
	for _, tt := range []struct {
		name     string
		listen   func(string) (net.Listener, error)
		deferred bool
	}{
		{"proxy", Listen, true},
		{"transparent", ListenTransparent, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := tt.listen("127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			accepted := make(chan net.Conn, 1)
			go func() {
				if c, err := ln.Accept(); err == nil {
					accepted <- c
				}
			}()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			select {
			case a := <-accepted:
				a.Close()
				if tt.deferred {
					t.Fatal("accepted before the client sent anything")
				}
				return
			case <-time.After(300 * time.Millisecond):
				if !tt.deferred {
					t.Fatal("not accepted within 300ms")
				}
			}
			c.Write([]byte("CONNECT"))
			select {
			case a := <-accepted:
				defer a.Close()
				a.SetReadDeadline(time.Now().Add(time.Second))
				buf := make([]byte, 16)
				if n, err := a.Read(buf); string(buf[:n]) != "CONNECT" {
					t.Errorf("first read: %q, %v", buf[:n], err)
				}
			case <-time.After(3 * time.Second):
				t.Fatal("not accepted once the client sent its request")
			}
		})
	}
}
