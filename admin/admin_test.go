package admin

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

func TestAuth(t *testing.T) {
	h, err := New("s3cret-token")
	if err != nil {
		t.Fatal(err)
	}
	h.Handle("GET /v1/ping", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "pong") }))
	srv := httptest.NewServer(h)
	defer srv.Close()
	tests := []struct {
		name, auth string
		want       int
	}{
		{"no token", "", 401},
		{"wrong token", "Bearer nope", 401},
		{"longer wrong token", "Bearer s3cret-token-and-more", 401},
		{"shorter token", "Bearer s3cret-toke", 401},
		{"a prefix of the token", "Bearer s3cret", 401},
		{"one character", "Bearer s", 401},
		{"empty token", "Bearer ", 401},
		{"scheme only", "Bearer", 401},
		{"raw token without a scheme", "s3cret-token", 401},
		{"not bearer", "Basic czNjcmV0LXRva2Vu", 401},
		{"another scheme with the token", "Token s3cret-token", 401},
		{"token and more", "Bearer s3cret-token extra", 401},
		{"right token", "Bearer s3cret-token", 200},
		{"scheme in lower case", "bearer s3cret-token", 200},
		{"scheme in upper case", "BEARER s3cret-token", 200},
		{"two spaces", "Bearer  s3cret-token", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", srv.URL+"/v1/ping", nil)
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("status = %d; want %d", resp.StatusCode, tt.want)
			}
		})
	}
}

// TestTwoAuthorizationHeaders: an ambiguous request is refused, whichever comes first.
func TestTwoAuthorizationHeaders(t *testing.T) {
	tok, _ := NewToken("s3cret-token")
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Add("Authorization", "Bearer s3cret-token")
	r.Header.Add("Authorization", "Bearer other")
	if tok.Matches(r) {
		t.Error("two Authorization headers matched")
	}
}

func TestReadToken(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "token")
	os.WriteFile(good, []byte("  abc123 \nignored\n"), 0o600)
	if tok, err := ReadToken(good); err != nil || tok != "abc123" {
		t.Errorf("ReadToken = %q, %v; want abc123", tok, err)
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("\n"), 0o600)
	if _, err := ReadToken(empty); err == nil {
		t.Error("ReadToken(empty file) succeeded; want an error")
	}
	if _, err := ReadToken(filepath.Join(dir, "missing")); err == nil {
		t.Error("ReadToken(missing file) succeeded; want an error")
	}
}
