// Command redirects is the origin of the README's trace example: on 127.0.0.1:8080
// (by default), /start redirects to b.test's /next, which redirects to c.test's
// /done, which answers. The names resolve through examples/trace/hosts.
package main

import (
	"flag"
	"log"
	"net/http"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve on")
	flag.Parse()
	mux := http.NewServeMux()
	mux.Handle("/start", http.RedirectHandler("http://b.test:8080/next", http.StatusMovedPermanently))
	mux.Handle("/next", http.RedirectHandler("http://c.test:8080/done", http.StatusFound))
	mux.HandleFunc("/done", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("done\n")) })
	log.Fatal(http.ListenAndServe(*listen, mux))
}
