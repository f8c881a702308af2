package secrets

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/egressd/egressd/admin"
)

// secretJSON is the runtime API's answer for one secret: the one place a value is
// revealed, to the function that asked for it.
type secretJSON struct {
	Key     string `json:"key"`
	Value   string `json:"value"`
	Version int64  `json:"version"`
}

// RuntimeHandler serves the function runtime API: GET and PUT /v1/secrets/{key}.
// Functions read and update; they cannot create or delete (405). With a non-empty
// token, every request needs "Authorization: Bearer <token>". A secret for which
// reserved (if not nil) says why it is egressd's own (a client key an upstreams entry
// uses) is neither read nor written through this API (403): functions never hold it.
func RuntimeHandler(s *Store, token string, reserved func(key string) string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/secrets/{key}", func(w http.ResponseWriter, r *http.Request) {
		if refuseReserved(w, s, "get", r.PathValue("key"), reserved) {
			return
		}
		sec, err := s.Get(r.PathValue("key"))
		if err != nil {
			writeStoreError(w, r.PathValue("key"), err)
			return
		}
		writeJSON(w, http.StatusOK, secretJSON{Key: sec.Key, Value: sec.Value.Reveal(), Version: sec.Version})
	})
	mux.HandleFunc("PUT /v1/secrets/{key}", func(w http.ResponseWriter, r *http.Request) {
		if refuseReserved(w, s, "update", r.PathValue("key"), reserved) {
			return
		}
		var body struct {
			Value *string `json:"value"`
		}
		if err := decodeBody(r, &body); err != nil || body.Value == nil {
			writeError(w, http.StatusBadRequest, `the body must be JSON: {"value": "..."}`)
			return
		}
		ifMatch, ok := parseIfMatch(r.Header.Get("If-Match"))
		if !ok {
			writeError(w, http.StatusBadRequest, `If-Match must be the version you read, such as "3"`)
			return
		}
		key := r.PathValue("key")
		v, err := s.Update(r.Context(), key, *body.Value, ifMatch)
		if err != nil {
			writeStoreError(w, key, err)
			return
		}
		w.Header().Set("ETag", strconv.Quote(strconv.FormatInt(v, 10)))
		writeJSON(w, http.StatusOK, map[string]any{"key": key, "version": v})
	})
	for _, m := range []string{"POST", "DELETE"} {
		mux.HandleFunc(m+" /v1/secrets/{key}", func(w http.ResponseWriter, _ *http.Request) {
			s.count(strings.ToLower(m), errForbidden)
			w.Header().Set("Allow", "GET, PUT")
			writeError(w, http.StatusMethodNotAllowed, "functions read and update secrets; operators create and delete them through the admin API")
		})
	}
	mux.HandleFunc("POST /v1/secrets", func(w http.ResponseWriter, _ *http.Request) {
		s.count("create", errForbidden)
		writeError(w, http.StatusMethodNotAllowed, "functions cannot create secrets; operators do, through the admin API")
	})
	return withToken(token, s, mux)
}

var errForbidden = errors.New("not allowed for functions")

// refuseReserved answers 403 for a secret that is egressd's own, and says so.
func refuseReserved(w http.ResponseWriter, s *Store, op, key string, reserved func(string) string) bool {
	if reserved == nil {
		return false
	}
	why := reserved(key)
	if why == "" {
		return false
	}
	s.count(op, errForbidden)
	writeError(w, http.StatusForbidden, "secret "+strconv.Quote(key)+" is egressd's own ("+why+"): functions neither read nor write it; operators replace it through the admin API or the CLI")
	return true
}

// withToken requires the runtime token when one is configured.
func withToken(token string, s *Store, next http.Handler) http.Handler {
	if token == "" {
		return next
	}
	want, _ := admin.NewToken(token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !want.Matches(r) {
			s.ops.WithLabelValues("auth", "unauthorized").Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="egressd secrets"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong runtime token")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// AdminRoutes are the operators' endpoints, for the admin API: list (keys, versions
// and times only), create, delete.
func AdminRoutes(s *Store, handle func(pattern string, h http.Handler)) {
	handle("GET /v1/secrets", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		list, err := s.List(r.URL.Query().Get("all") == "true")
		if err != nil {
			writeStoreError(w, "", err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"secrets": list})
	}))
	handle("POST /v1/secrets", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Key   string  `json:"key"`
			Value *string `json:"value"`
		}
		if err := decodeBody(r, &body); err != nil || body.Value == nil {
			writeError(w, http.StatusBadRequest, `the body must be JSON: {"key": "...", "value": "..."}`)
			return
		}
		info, err := s.Create(r.Context(), body.Key, *body.Value)
		if err != nil {
			writeStoreError(w, body.Key, err)
			return
		}
		writeJSON(w, http.StatusCreated, info)
	}))
	handle("DELETE /v1/secrets/{key}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := s.Delete(r.Context(), r.PathValue("key")); err != nil {
			writeStoreError(w, r.PathValue("key"), err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
}

// decodeBody reads a JSON body of bounded size. Its error never quotes the body: a
// decoder's message can hold a piece of the value.
func decodeBody(r *http.Request, v any) error {
	data, err := io.ReadAll(io.LimitReader(r.Body, MaxValueLen*2+4096))
	if err != nil {
		return errors.New("reading the body failed")
	}
	if json.Unmarshal(data, v) != nil {
		return errors.New("the body is not valid JSON")
	}
	return nil
}

// parseIfMatch reads If-Match: "3", 3 or W/"3". Empty means no condition (0).
func parseIfMatch(h string) (int64, bool) {
	h = strings.TrimSpace(h)
	if h == "" {
		return 0, true
	}
	h = strings.Trim(strings.TrimPrefix(h, "W/"), `"`)
	v, err := strconv.ParseInt(h, 10, 64)
	return v, err == nil && v > 0
}

func writeStoreError(w http.ResponseWriter, key string, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, "no secret "+strconv.Quote(key))
	case errors.Is(err, ErrExists):
		writeError(w, http.StatusConflict, "secret "+strconv.Quote(key)+" exists; delete it first, or update its value through the runtime API")
	case errors.Is(err, ErrConflict):
		writeError(w, http.StatusPreconditionFailed, err.Error()+"; read it again and retry")
	case errors.Is(err, ErrInvalid):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, ErrBusy):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		// The store's own errors name files and keys, never values.
		writeError(w, http.StatusServiceUnavailable, "the secret store is unavailable: "+err.Error())
	}
}

// writeJSON answers with v; secret answers are never cached.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Cache-Control", "no-store")
	admin.WriteJSON(w, status, v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Cache-Control", "no-store")
	admin.WriteError(w, status, msg)
}
