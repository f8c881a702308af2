package main

import (
	"bufio"
	"fmt"
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// serveBareConnect is the bench's bare CONNECT relay, run in a process of its own
// (bench -bare-connect ADDR): in Go, like egressd, but with nothing of egressd's
// work (no net/http, no goproxy, no allowlist, no access log, no limits). It answers
// every CONNECT, so it listens on loopback only and lives only as long as the bench.
// Its ratios are a ceiling for any CONNECT proxy written in Go on the machine.
func serveBareConnect(addr string) int {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); !ok || !tcp.IP.IsLoopback() {
		fmt.Fprintln(os.Stderr, "bench: the bare relay listens on loopback only")
		return 2
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return 1
		}
		go bareTunnel(c.(*net.TCPConn))
	}
}

func bareTunnel(c *net.TCPConn) {
	defer c.Close()
	tp := textproto.NewReader(bufio.NewReaderSize(c, 1024))
	line, err := tp.ReadLine()
	if err != nil {
		return
	}
	if _, err := tp.ReadMIMEHeader(); err != nil {
		return
	}
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "CONNECT" {
		return
	}
	if host, _, err := net.SplitHostPort(f[1]); err != nil || !net.ParseIP(host).IsLoopback() {
		c.Write([]byte("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"))
		return
	}
	u, err := net.Dial("tcp", f[1])
	if err != nil {
		return
	}
	up := u.(*net.TCPConn)
	defer up.Close()
	c.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n"))
	go func() {
		up.ReadFrom(c) // splice
		up.CloseWrite()
	}()
	c.ReadFrom(up)
	c.CloseWrite()
}

// startBareConnect runs the bench's own binary as the bare CONNECT relay.
func startBareConnect(dir string, _ []string) (*peer, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-bare-connect", addr)
	// On one processor, as egressd runs by default (its processors key): a ceiling
	// on what egressd does, so on the same terms.
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	cmd.SysProcAttr = ownGroup()
	cmd.Stderr, _ = os.Create(filepath.Join(dir, "bare-connect.log"))
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &peer{name: "go-bare*", addr: addr, cmd: cmd, connectOnly: true}
	return p, waitListening(addr, p)
}
