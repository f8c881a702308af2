package policy

import (
	"net/url"
	"testing"
)

func TestSplitTarget(t *testing.T) {
	tests := []struct {
		in      string
		def     uint16
		host    string
		port    uint16
		wantErr bool
	}{
		{"api.example.com:8443", 0, "api.example.com", 8443, false},
		{"api.example.com", 443, "api.example.com", 443, false},
		{"api.example.com", 0, "", 0, true},
		{"[2001:db8::1]:443", 0, "2001:db8::1", 443, false},
		{"[2001:db8::1]", 80, "2001:db8::1", 80, false},
		{"host:0", 0, "", 0, true},
		{"host:65536", 0, "", 0, true},
		{"host:http", 0, "", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			host, port, err := SplitTarget(tt.in, tt.def)
			if (err != nil) != tt.wantErr || host != tt.host || port != tt.port {
				t.Errorf("SplitTarget(%q, %d) = %q, %d, %v; want %q, %d, error %v", tt.in, tt.def, host, port, err, tt.host, tt.port, tt.wantErr)
			}
		})
	}
	if _, _, err := URLTarget(&url.URL{Scheme: "ftp", Host: "example.com"}); err == nil {
		t.Errorf("URLTarget(ftp://example.com) accepted; want an error naming the scheme")
	}
}
