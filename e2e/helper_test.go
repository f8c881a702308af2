package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// runHelper is the test binary run as a helper process, inside a network namespace
// a test made, as the user the test chose:
//
//	origins HITSDIR SPEC...   serve each "kind addr name [cert key]" (kind tls, http or
//	                          echo), append a line to HITSDIR/name per connection, and
//	                          print "ready" once all listen
//	dial ADDR                 send "ping", print the line that comes back
//	dns SERVER NAME           ask SERVER for NAME's A records, print the rcode and answers
//	etcd NAME DIR CPORT PPORT INITIAL
//	                          run one etcd member (embed) on loopback, print "ready"
func runHelper(mode string, args []string) int {
	switch mode {
	case "etcd":
		return helperEtcd(args)
	case "origins":
		return helperOrigins(args[0], args[1:])
	case "dial":
		c, err := net.DialTimeout("tcp", args[0], 3*time.Second)
		if err != nil {
			fmt.Println("error:", err)
			return 1
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		io.WriteString(c, "ping\n")
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			fmt.Println("error:", err)
			return 1
		}
		fmt.Print(line)
		return 0
	case "dns":
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(args[1]), dns.TypeA)
		c := &dns.Client{Timeout: 3 * time.Second}
		resp, _, err := c.Exchange(m, args[0])
		if err != nil {
			fmt.Println("error:", err)
			return 1
		}
		var answers []string
		for _, rr := range resp.Answer {
			if a, ok := rr.(*dns.A); ok {
				answers = append(answers, a.A.String())
			}
		}
		fmt.Println(dns.RcodeToString[resp.Rcode], strings.Join(answers, ","))
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown helper", mode)
	return 2
}

func helperOrigins(hits string, specs []string) int {
	hit := func(name string) {
		f, err := os.OpenFile(filepath.Join(hits, name), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			f.WriteString("hit\n")
			f.Close()
		}
	}
	for _, spec := range specs {
		f := strings.Fields(spec)
		kind, addr, name := f[0], f[1], f[2]
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Println("error:", err)
			return 1
		}
		answer := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "hello from "+name+"\n")
		})
		switch kind {
		case "tls":
			pair, err := tls.LoadX509KeyPair(f[3], f[4])
			if err != nil {
				fmt.Println("error:", err)
				return 1
			}
			tl := tls.NewListener(&hitListener{Listener: ln, hit: func() { hit(name) }}, &tls.Config{Certificates: []tls.Certificate{pair}})
			go http.Serve(tl, answer)
		case "http":
			go http.Serve(&hitListener{Listener: ln, hit: func() { hit(name) }}, answer)
		case "echo":
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					hit(name)
					go func() {
						defer c.Close()
						c.SetDeadline(time.Now().Add(5 * time.Second))
						if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
							io.WriteString(c, "pong from "+name+"\n")
						}
					}()
				}
			}()
		}
	}
	fmt.Println("ready")
	select {} // until the test kills it
}

// hitListener records every connection it accepts.
type hitListener struct {
	net.Listener
	hit func()
}

func (l *hitListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.hit()
	}
	return c, err
}
