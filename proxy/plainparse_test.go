package proxy

import (
	"reflect"
	"strings"
	"testing"
)

// commonHeads are heads as clients send them, which parseCommonPlain takes.
var commonHeads = []string{
	"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nProxy-Connection: Keep-Alive\r\n\r\n",
	"GET http://a.test:8080/p?q=1 HTTP/1.1\r\nHost: a.test:8080\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n",
	"HEAD http://127.0.0.2:8081/x HTTP/1.1\r\nHost: 127.0.0.2:8081\r\nConnection: close\r\n\r\n",
	"DELETE http://[::1]:80/a%20b HTTP/1.1\r\nhost: [::1]:80\r\nx-lower: v\r\nX-Dup: 1\r\nx-dup: 2\r\nX-Spaces: \t padded \t\r\nX-Empty:\r\n\r\n",
	"OPTIONS http://a.test/ HTTP/1.1\r\nHost: a.test\r\nConnection: X-A, keep-alive\r\nX-A: 1\r\nCookie: a=1\r\nX-UTF8: h\xc3\xa9\r\n\r\n",
}

// TestParseCommonPlain: common heads take the short way, each to the request
// net/http's parser gives; the rest are left to net/http's.
func TestParseCommonPlain(t *testing.T) {
	for _, head := range commonHeads {
		fast, slow := parseCommonPlain([]byte(head)), parsePlainNetHTTP([]byte(head))
		if fast == nil || slow == nil {
			t.Errorf("%q: parseCommonPlain %v, net/http's parser %v; want both to take it", head, fast != nil, slow != nil)
			continue
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Errorf("%q:\nparseCommonPlain %+v\nnet/http's parser %+v", head, fast, slow)
		}
	}
	left := []string{
		"GET http://a.test/ HTTP/1.1\nHost: a.test\n\n",                                     // bare LF
		"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX-Fold: a\r\n b\r\n\r\n",            // folded
		"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nPragma: no-cache\r\n\r\n",           // rewritten by net/http
		"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\n\r\n",          // a length
		"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n",               // two Hosts
		"GET http://a.test/ HTTP/1.1\r\n\r\n",                                               // no Host
		"GET http://a.test/ HTTP/1.0\r\nHost: a.test\r\n\r\n",                               // HTTP/1.0
		"GET /local HTTP/1.1\r\nHost: a.test\r\n\r\n",                                       // origin form
		"GET HTTP://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",                               // scheme in capitals
		"GET http://egressd.internal/ HTTP/1.1\r\nHost: egressd.internal\r\n\r\n",           // egressd's own
		"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nBad Name: x\r\n\r\n",                // invalid name
		"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX-Ctl: a\x01b\r\n\r\n",              // invalid value
		"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX-CR: a\rb\r\n\r\n",                 // lone CR
		"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\nextra",                          // past the head
		"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",                           // a tunnel
		"G(T http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",                               // invalid method
		"GET http://a.test/ HTTP/1.1\r\nHost: a b\r\n\r\n",                                  // invalid Host
		"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\n\r\n",         // an upgrade
		"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\n\r\n",       // a wait
		"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n", // a body
	}
	for _, head := range left {
		if r := parseCommonPlain([]byte(head)); r != nil {
			t.Errorf("parseCommonPlain took %q; it is net/http's to parse", head)
		}
	}
}

// FuzzParseCommonPlain: every head parseCommonPlain takes, net/http's parser
// takes too, to the same request.
func FuzzParseCommonPlain(f *testing.F) {
	for _, h := range commonHeads {
		f.Add(h)
	}
	f.Add("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nConnection: close, x\r\n\r\n")
	f.Add("GET http://u:p@a.test:1/%zz HTTP/1.1\r\nHost: a.test\r\n\r\n")
	f.Fuzz(func(t *testing.T, head string) {
		if !strings.HasSuffix(head, "\r\n\r\n") {
			head += "\r\n\r\n"
		}
		fast := parseCommonPlain([]byte(head))
		if fast == nil {
			return
		}
		slow := parsePlainNetHTTP([]byte(head))
		if slow == nil {
			t.Fatalf("parseCommonPlain took %q, which net/http's parser leaves", head)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q:\nparseCommonPlain %+v\nnet/http's parser %+v", head, fast, slow)
		}
	})
}

func BenchmarkParsePlain(b *testing.B) {
	head := []byte(commonHeads[1])
	b.Run("common", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			parseCommonPlain(head)
		}
	})
	b.Run("net/http", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			parsePlainNetHTTP(head)
		}
	})
}
