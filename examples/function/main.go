// Command function is the example function of egressd's demo. With -origin it is
// instead a tiny HTTP origin for the function to call.
//
// When the scheduler invokes it (POST /), it reads a secret through egressd
// (http://egressd.internal), calls an allowed origin through HTTP_PROXY, and shows
// that a host off the allowlist is refused. It prints what happened.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on (port 0: a free one)")
	addrFile := flag.String("addr-file", "", "write the address served on to this file once listening")
	origin := flag.Bool("origin", false, "serve as the demo origin instead")
	allowedURL := flag.String("allowed", "http://origin.demo.test:18081/", "an allowed URL to call")
	deniedURL := flag.String("denied", "http://not-on-the-list.invalid/", "a URL off the allowlist")
	flag.Parse()
	log.SetFlags(0)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	if *addrFile != "" {
		if err := os.WriteFile(*addrFile, []byte(ln.Addr().String()), 0o644); err != nil {
			log.Fatal(err)
		}
	}
	if *origin {
		log.Fatal(http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from the origin (you asked for %s)\n", r.URL.Path)
		})))
	}
	// Every call goes through HTTP_PROXY, as a function in a pod's would.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: http.ProxyFromEnvironment}}
	log.Fatal(http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		payload, _ := io.ReadAll(r.Body)
		out := &strings.Builder{}
		fmt.Fprintf(out, "function: invoked by schedule %s for %s with %s\n",
			r.Header.Get("X-Egressd-Schedule-Id"), r.Header.Get("X-Egressd-Scheduled-Time"), payload)
		fmt.Fprintf(out, "function: secret api-token: %s\n", call(client, "http://egressd.internal/v1/secrets/api-token"))
		fmt.Fprintf(out, "function: allowed origin: %s\n", call(client, *allowedURL))
		fmt.Fprintf(out, "function: denied origin: %s\n", call(client, *deniedURL))
		fmt.Fprint(os.Stdout, out.String())
		io.WriteString(w, out.String())
	})))
}

func call(c *http.Client, url string) string {
	resp, err := c.Get(url)
	if err != nil {
		return "error: " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(b)))
}
