package proxy

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
)

// BenchmarkHTTP measures plain HTTP requests through the proxy, in process, for
// profiling the request path (go test -bench HTTP -cpuprofile cpu.out ./proxy).
// bench/ compares the binary with no proxy at all.
func BenchmarkHTTP(b *testing.B) {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok")
	}))
	defer origin.Close()
	_, addr := serveProxy(b, Options{}, origin.Listener.Addr().String())
	u, _ := url.Parse("http://" + addr)
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(u), MaxIdleConnsPerHost: 64}}
	target := origin.URL + "/"
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Get(target)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
}

// BenchmarkConnect measures short CONNECT tunnels (open, one byte each way, close)
// through the proxy, in process, for profiling the tunnel path.
func BenchmarkConnect(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	echo := ln.Addr().String()
	_, proxyAddr := serveProxy(b, Options{}, echo)
	request := []byte("CONNECT " + echo + " HTTP/1.1\r\nHost: " + echo + "\r\n\r\n")
	const answer = "HTTP/1.1 200 Connection established\r\n\r\n"
	b.ReportAllocs()
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, len(answer)+1)
		for pb.Next() {
			c, err := net.Dial("tcp", proxyAddr)
			if err != nil {
				b.Error(err)
				return
			}
			c.Write(append(request, 'x'))
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != answer+"x" {
				b.Errorf("read %q, %v; want %q", buf, err, answer+"x")
				c.Close()
				return
			}
			c.Close()
		}
	})
}
