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
	token Token
	mux   *http.ServeMux
}

// Token is a bearer token, kept as its SHA-256 digest. It is the one check of
// "Authorization: Bearer <token>" in egressd: the admin API and the secrets runtime
// API both use it.
type Token struct{ sum [sha256.Size]byte }

// NewToken returns the Token for text, which must not be empty.
func NewToken(text string) (Token, error) {
	if text == "" {
		return Token{}, errors.New("empty token")
	}
	return Token{sum: sha256.Sum256([]byte(text))}, nil
}

// Matches reports whether r carries exactly one "Authorization: Bearer <token>"
// with this token: the scheme in any case (RFC 7235), one or more spaces, then the
// token and nothing else. It compares digests in constant time: comparing the
// tokens themselves would leak their length.
func (t Token) Matches(r *http.Request) bool {
	values := r.Header.Values("Authorization")
	if len(values) != 1 {
		return false
	}
	scheme, cred, ok := strings.Cut(values[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	cred = strings.TrimLeft(cred, " ")
	if cred == "" || strings.ContainsAny(cred, " \t") {
		return false
	}
	sum := sha256.Sum256([]byte(cred))
	return subtle.ConstantTimeCompare(sum[:], t.sum[:]) == 1
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
	t, err := NewToken(token)
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	return &Handler{token: t, mux: http.NewServeMux()}, nil
}

// Handle registers an endpoint, with a net/http ServeMux pattern ("GET /v1/policy").
func (h *Handler) Handle(pattern string, handler http.Handler) { h.mux.Handle(pattern, handler) }

// ServeHTTP checks the bearer token, then serves the request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.token.Matches(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="egressd"`)
		WriteError(w, http.StatusUnauthorized, "missing or wrong bearer token; send Authorization: Bearer <the token in admin.token_file>")
		return
	}
	h.mux.ServeHTTP(w, r)
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
