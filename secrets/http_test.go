package secrets

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestRuntimeToken: the runtime API takes exactly the configured bearer token, as
// the admin API does (the same check, admin.Token).
func TestRuntimeToken(t *testing.T) {
	s, _, _ := newStore(t, map[string]string{"api": "v"})
	srv := httptest.NewServer(RuntimeHandler(s, "fn-token", nil))
	defer srv.Close()
	tests := []struct {
		auth string
		want int
	}{
		{"", 401},
		{"Bearer wrong", 401},
		{"Bearer fn-toke", 401},
		{"Bearer fn-token-and-more", 401},
		{"Bearer fn", 401},
		{"Bearer ", 401},
		{"fn-token", 401}, // no scheme: once accepted here, never by the admin API
		{"Basic Zm4tdG9rZW4=", 401},
		{"Bearer fn-token", 200},
		{"bearer fn-token", 200},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest("GET", srv.URL+"/v1/secrets/api", nil)
		if tt.auth != "" {
			req.Header.Set("Authorization", tt.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("Authorization %q: %d; want %d", tt.auth, resp.StatusCode, tt.want)
		}
		if tt.want == 401 && strings.Contains(string(body), `"value"`) {
			t.Errorf("Authorization %q: a refused request got a value", tt.auth)
		}
	}
}

// TestRuntimeMethods: functions read and update, and nothing else.
func TestRuntimeMethods(t *testing.T) {
	s, _, _ := newStore(t, map[string]string{"api": "v"})
	srv := httptest.NewServer(RuntimeHandler(s, "", nil))
	defer srv.Close()
	tests := []struct {
		method, path, body string
		want               int
	}{
		{"GET", "/v1/secrets/api", "", 200},
		{"PUT", "/v1/secrets/api", `{"value":"v2"}`, 200},
		{"PUT", "/v1/secrets/missing", `{"value":"x"}`, 404},
		{"POST", "/v1/secrets", `{"key":"new","value":"x"}`, 405},
		{"POST", "/v1/secrets/new", `{"value":"x"}`, 405},
		{"DELETE", "/v1/secrets/api", "", 405},
		{"GET", "/v1/secrets/missing", "", 404},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest(tt.method, srv.URL+tt.path, strings.NewReader(tt.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s %s: %d; want %d", tt.method, tt.path, resp.StatusCode, tt.want)
		}
	}
	if sec, _ := s.Get("api"); sec.Value.Reveal() != "v2" {
		t.Error("the allowed update did not happen")
	}
	if _, err := s.Get("new"); err == nil {
		t.Error("a function created a secret")
	}
}

// TestRuntimeReserved: a secret egressd keeps for itself (a client key) is neither
// read nor written by functions.
func TestRuntimeReserved(t *testing.T) {
	s, _, _ := newStore(t, map[string]string{"partner-key": "-----BEGIN EC PRIVATE KEY-----", "api": "v"})
	reserved := func(key string) string {
		if key == "partner-key" {
			return "the client key of upstream partner.test"
		}
		return ""
	}
	srv := httptest.NewServer(RuntimeHandler(s, "", reserved))
	defer srv.Close()
	for _, tt := range []struct {
		method, path, body string
		want               int
	}{
		{"GET", "/v1/secrets/partner-key", "", 403},
		{"PUT", "/v1/secrets/partner-key", `{"value":"mine"}`, 403},
		{"GET", "/v1/secrets/api", "", 200},
	} {
		req, _ := http.NewRequest(tt.method, srv.URL+tt.path, strings.NewReader(tt.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.want || strings.Contains(string(b), "BEGIN") {
			t.Errorf("%s %s: %d %s; want %d and no value", tt.method, tt.path, resp.StatusCode, b, tt.want)
		}
	}
	if sec, _ := s.Get("partner-key"); sec.Value.Reveal() != "-----BEGIN EC PRIVATE KEY-----" {
		t.Error("a function replaced a reserved secret")
	}
}
