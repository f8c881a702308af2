package diag

import (
	"net/http"
	"strconv"

	"github.com/egressd/egressd/admin"
)

// TraceHandler serves GET /v1/trace?url=...: the trace, run by the daemon.
// With follow_denied=true it fetches hops that the policy denies too.
func TraceHandler(t *Tracer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw := r.URL.Query().Get("url")
		if raw == "" {
			admin.WriteError(w, http.StatusBadRequest, "give the URL to trace: /v1/trace?url=https://example.com/")
			return
		}
		tracer := *t
		tracer.FollowDenied = r.URL.Query().Get("follow_denied") == "true"
		tr, err := tracer.Trace(r.Context(), raw)
		if err != nil {
			admin.WriteError(w, http.StatusBadRequest, err.Error())
			return
		}
		admin.WriteJSON(w, http.StatusOK, tr)
	})
}

// DenialsHandler serves GET /v1/denials?limit=N: the most recent denials first.
func DenialsHandler(d *Denials) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		limit := 0
		if s := r.URL.Query().Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 {
				admin.WriteError(w, http.StatusBadRequest, "limit must be a whole number, such as ?limit=20")
				return
			}
			limit = n
		}
		admin.WriteJSON(w, http.StatusOK, map[string]any{"denials": d.Recent(limit)})
	})
}
