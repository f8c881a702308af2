package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// freePort returns a loopback address nothing listens on, for a peer to take.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr, nil
}

// waitListening waits up to 10 s for something to accept on addr.
func waitListening(addr string, p *peer) error {
	for i := 0; i < 200; i++ {
		if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.stop()
	return fmt.Errorf("%s did not listen on %s within 10 s", p.name, addr)
}

// hosts are the targets' addresses, each once.
func hosts(targets []string) []string { return uniqueParts(targets, 0) }

// ports are the targets' ports, each once.
func ports(targets []string) []string { return uniqueParts(targets, 1) }

// uniqueParts returns part i (0 the host, 1 the port) of each host:port, each once.
func uniqueParts(targets []string, i int) []string {
	var out []string
	for _, t := range targets {
		h, p, _ := net.SplitHostPort(t)
		if v := []string{h, p}[i]; !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// startSquid runs Debian's squid in the foreground with the same allowlist: the
// loopback targets, nothing else; no cache; an access log, as egressd keeps one.
func startSquid(dir string, targets []string) (*peer, error) {
	bin, err := exec.LookPath("squid")
	if err != nil {
		return nil, fmt.Errorf("squid: %w (apt-get install squid)", errNotInstalled)
	}
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	sd := filepath.Join(dir, "squid")
	os.MkdirAll(sd, 0o777)
	os.Chmod(sd, 0o777)
	conf := fmt.Sprintf(`http_port %s
pid_filename %s/squid.pid
cache_log %s/cache.log
access_log stdio:%s/access.log
coredump_dir %s
cache deny all
cache_mem 8 MB
max_filedescriptors 16384
shutdown_lifetime 1 second
acl targets dst %s
acl target_ports port %s
http_access allow targets target_ports
http_access deny all
`, addr, sd, sd, sd, sd, strings.Join(hosts(targets), " "), strings.Join(ports(targets), " "))
	return runPeer("squid", addr, sd, conf, bin, "-N", "-f")
}

// startTinyproxy runs Debian's tinyproxy in the foreground, allowing only the
// loopback targets (a default-deny filter) and their ports for CONNECT.
func startTinyproxy(dir string, targets []string) (*peer, error) {
	bin, err := exec.LookPath("tinyproxy")
	if err != nil {
		return nil, fmt.Errorf("tinyproxy: %w (apt-get install tinyproxy)", errNotInstalled)
	}
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	host, port, _ := net.SplitHostPort(addr)
	td := filepath.Join(dir, "tinyproxy")
	os.MkdirAll(td, 0o777)
	os.Chmod(td, 0o777)
	filter := filepath.Join(td, "filter")
	if err := os.WriteFile(filter, []byte(fmt.Sprintf("^127\\.0\\.0\\.[1-%d]$\n", originAddrs)), 0o644); err != nil {
		return nil, err
	}
	var connect []string
	for _, p := range ports(targets) {
		connect = append(connect, "ConnectPort "+p)
	}
	conf := fmt.Sprintf(`User nobody
Group nogroup
Port %s
Listen %s
Timeout 600
MaxClients 8192
Allow 127.0.0.1
LogFile "%s/tinyproxy.log"
LogLevel Connect
PidFile "%s/tinyproxy.pid"
DisableViaHeader Yes
Filter "%s"
FilterDefaultDeny Yes
%s
`, port, host, td, td, filter, strings.Join(connect, "\n"))
	return runPeer("tinyproxy", addr, td, conf, bin, "-d", "-c")
}

// runPeer writes conf into dir, starts bin with args and the config file's path, and
// waits until it listens on addr.
func runPeer(name, addr, dir, conf, bin string, args ...string) (*peer, error) {
	confFile := filepath.Join(dir, name+".conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, append(args, confFile)...)
	cmd.SysProcAttr = ownGroup()
	cmd.Stderr, _ = os.Create(filepath.Join(dir, "stderr.log"))
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &peer{name: name, addr: addr, cmd: cmd}
	return p, waitListening(addr, p)
}

// relayPorts gives each target a free loopback port for a relay to listen on, and
// returns the map and the listen addresses in the targets' order.
func relayPorts(targets []string) (map[string]string, []string, error) {
	m := map[string]string{}
	var addrs []string
	for _, t := range targets {
		a, err := freePort()
		if err != nil {
			return nil, nil, err
		}
		m[t] = a
		addrs = append(addrs, a)
	}
	return m, addrs, nil
}

// startHAProxy runs Debian's haproxy as a ceiling: a TCP relay with splice-auto
// for the sink and the echo server, and a reverse proxy reusing its upstream
// connections for the web server (the last target). Two threads, as egressd has
// two cores.
func startHAProxy(dir string, targets []string) (*peer, error) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		return nil, fmt.Errorf("haproxy: %w (apt-get install haproxy)", errNotInstalled)
	}
	relay, addrs, err := relayPorts(targets)
	if err != nil {
		return nil, err
	}
	hd := filepath.Join(dir, "haproxy")
	os.MkdirAll(hd, 0o755)
	var b strings.Builder
	b.WriteString("global\n  nbthread 2\n  maxconn 4096\ndefaults\n  timeout connect 5s\n  timeout client 10m\n  timeout server 10m\n  option splice-auto\n")
	for i, t := range targets {
		mode, reuse := "tcp", ""
		if i >= len(targets)-originAddrs { // the web server's
			mode, reuse = "http", "  http-reuse always\n"
		}
		fmt.Fprintf(&b, "frontend f%d\n  mode %s\n  bind %s\n  default_backend b%d\nbackend b%d\n  mode %s\n%s  server s %s\n",
			i, mode, addrs[i], i, i, mode, reuse, t)
	}
	p, err := runPeer("haproxy*", addrs[0], hd, b.String(), bin, "-db", "-f")
	if p != nil {
		p.relay = relay
	}
	return p, err
}

// startNginx runs Debian's nginx as a ceiling: stream relays (1 MiB buffers, copied
// in user space) for the sink and the echo server, and a reverse proxy with
// upstream keep-alive for the web server. Two workers.
func startNginx(dir string, targets []string) (*peer, error) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		return nil, fmt.Errorf("nginx: %w (apt-get install nginx libnginx-mod-stream)", errNotInstalled)
	}
	const streamModule = "/usr/lib/nginx/modules/ngx_stream_module.so"
	if _, err := os.Stat(streamModule); err != nil {
		return nil, fmt.Errorf("nginx's stream module: %w (apt-get install libnginx-mod-stream)", errNotInstalled)
	}
	relay, addrs, err := relayPorts(targets)
	if err != nil {
		return nil, err
	}
	nd := filepath.Join(dir, "nginx")
	os.MkdirAll(nd, 0o755)
	webFrom := len(targets) - originAddrs // the web server's addresses are the last
	var streams, webs strings.Builder
	for i, t := range targets {
		if i < webFrom {
			fmt.Fprintf(&streams, "  server { listen %s; proxy_pass %s; proxy_buffer_size 1m; }\n", addrs[i], t)
			continue
		}
		fmt.Fprintf(&webs, "  upstream web%d { server %s; keepalive 16; }\n", i, t)
		fmt.Fprintf(&webs, "  server { listen %s; location / { proxy_pass http://web%d; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }\n", addrs[i], i)
	}
	conf := fmt.Sprintf(`load_module %s;
worker_processes 2;
pid %s/nginx.pid;
error_log %s/error.log;
daemon off;
events { worker_connections 8192; }
stream {
%s}
http {
  access_log off;
%s}
`, streamModule, nd, nd, streams.String(), webs.String())
	p, err := runPeer("nginx*", addrs[0], nd, conf, bin, "-e", filepath.Join(nd, "error.log"), "-p", nd, "-c")
	if p != nil {
		p.relay = relay
	}
	return p, err
}
