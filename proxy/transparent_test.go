package proxy

import (
	"crypto/tls"
	"net"
	"testing"
	"time"
)

// TestPeek: the name of a TLS ClientHello (from crypto/tls itself) and of an HTTP
// request, and none for other bytes or silence.
func TestPeek(t *testing.T) {
	tests := []struct {
		name      string
		send      func(c net.Conn)
		wantName  string
		wantProto string
	}{
		{"tls", func(c net.Conn) { tls.Client(c, &tls.Config{ServerName: "api.example.com"}).Handshake() }, "api.example.com", "tls"},
		{"tls without sni", func(c net.Conn) { tls.Client(c, &tls.Config{InsecureSkipVerify: true}).Handshake() }, "", "tls"},
		{"http", func(c net.Conn) { c.Write([]byte("GET /x HTTP/1.1\r\nHost: Api.Example.com:8080\r\n\r\n")) }, "Api.Example.com", "http"},
		{"http in pieces", func(c net.Conn) {
			c.Write([]byte("POST /x HTTP/1.1\r\nHo"))
			time.Sleep(20 * time.Millisecond)
			c.Write([]byte("st: b.example.com\r\n\r\n"))
		}, "b.example.com", "http"},
		{"ssh", func(c net.Conn) { c.Write([]byte("SSH-2.0-OpenSSH_9.2\r\n")) }, "", "tcp"},
		{"binary", func(c net.Conn) { c.Write([]byte{0, 1, 2, 3}) }, "", "tcp"},
		{"silence", func(c net.Conn) {}, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := net.Pipe()
			defer client.Close()
			defer server.Close()
			go tt.send(client)
			server.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			seen, name, proto := peek(server)
			if name != tt.wantName || proto != tt.wantProto {
				t.Errorf("peek = %q, %q (%d bytes); want %q, %q", name, proto, len(seen), tt.wantName, tt.wantProto)
			}
		})
	}
}
