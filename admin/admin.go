// Package admin is egressd's authenticated admin API.
//
// Every request needs "Authorization: Bearer <token>", the token read from a file
// (a mounted Kubernetes Secret, say); a missing or wrong token gets 401. Endpoints
// are registered by the parts of egressd that own them (diagnostics now, secrets and
// schedules later); this package only authenticates and routes.
package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
)

// Handler authenticates every request and routes it to the registered endpoints.
type Handler struct {
	token [sha256.Size]byte
	mux   *http.ServeMux
}

// ReadToken reads a token file: the first line, trimmed. An empty token is an error,
// so that an admin API never runs unauthenticated.
func ReadToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	tok, _, _ := strings.Cut(string(data), "\n")
	tok = strings.TrimSpace(tok)
	if tok == "" {
		return "", fmt.Errorf("admin token: %s is empty; put a long random token in it (openssl rand -hex 32)", path)
	}
	return tok, nil
}

// New returns a Handler that accepts token.
func New(token string) (*Handler, error) {
	if token == "" {
		return nil, errors.New("admin: empty token")
	}
	return &Handler{token: sha256.Sum256([]byte(token)), mux: http.NewServeMux()}, nil
}

// Handle registers an endpoint, with a net/http ServeMux pattern ("GET /v1/policy").
func (h *Handler) Handle(pattern string, handler http.Handler) { h.mux.Handle(pattern, handler) }

// ServeHTTP checks the bearer token, then serves the request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="egressd"`)
		WriteError(w, http.StatusUnauthorized, "missing or wrong bearer token; send Authorization: Bearer <the token in admin.token_file>")
		return
	}
	h.mux.ServeHTTP(w, r)
}

// authorized compares digests of the tokens in constant time: comparing the tokens
// themselves would leak their length.
func (h *Handler) authorized(r *http.Request) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(got)))
	return subtle.ConstantTimeCompare(sum[:], h.token[:]) == 1
}

// WriteJSON writes v as the JSON answer.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// WriteError writes {"error": msg}.
func WriteError(w http.ResponseWriter, status int, msg string) {
	WriteJSON(w, status, map[string]string{"error": msg})
}
