package scheduler

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"github.com/egressd/egressd/admin"
)

// AdminRoutes registers the schedule endpoints on the admin API.
func AdminRoutes(s *Scheduler, handle func(pattern string, h http.Handler)) {
	handle("GET /v1/schedules", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		admin.WriteJSON(w, http.StatusOK, map[string]any{"schedules": s.List()})
	}))
	handle("POST /v1/schedules", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Function string          `json:"function"`
			Cron     string          `json:"cron"`
			Payload  json.RawMessage `json:"payload"`
		}
		data, err := io.ReadAll(io.LimitReader(r.Body, 4*MaxPayloadChars+4096))
		if err != nil || json.Unmarshal(data, &body) != nil {
			admin.WriteError(w, http.StatusBadRequest, `the body must be JSON: {"function": "...", "cron": "...", "payload": {...}}`)
			return
		}
		sc, err := s.Create(body.Function, body.Cron, payloadText(body.Payload))
		if err != nil {
			writeSchedulerError(w, err)
			return
		}
		admin.WriteJSON(w, http.StatusCreated, sc)
	}))
	handle("DELETE /v1/schedules/{id}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := s.Delete(r.PathValue("id")); err != nil {
			writeSchedulerError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	handle("GET /v1/functions", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		type fn struct {
			Name  string `json:"name"`
			State string `json:"state"`
		}
		out := []fn{}
		for _, f := range s.Functions() {
			out = append(out, fn{f.Name, f.State})
		}
		admin.WriteJSON(w, http.StatusOK, map[string]any{"functions": out, "max_schedules": s.MaxSchedules()})
	}))
	// GET /v1/schedules/next?cron=EXPR: the next three runs, or why EXPR is refused
	// (with valid examples): what a form checks as the operator types.
	handle("GET /v1/schedules/next", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next, err := s.Next(r.URL.Query().Get("cron"), 3)
		if err != nil {
			admin.WriteError(w, http.StatusBadRequest, err.Error())
			return
		}
		admin.WriteJSON(w, http.StatusOK, map[string]any{"next": next})
	}))
	handle("GET /v1/schedules/deleted", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		admin.WriteJSON(w, http.StatusOK, map[string]any{"deleted": s.Deleted()})
	}))
	handle("POST /v1/schedules/{id}/restore", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sc, err := s.Restore(r.PathValue("id"))
		if err != nil {
			writeSchedulerError(w, err)
			return
		}
		admin.WriteJSON(w, http.StatusCreated, sc)
	}))
	handle("POST /v1/schedules/{id}/run", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sc, err := s.RunNow(r.PathValue("id"))
		if err != nil {
			writeSchedulerError(w, err)
			return
		}
		admin.WriteJSON(w, http.StatusOK, sc)
	}))
}

// payloadText is the payload as the function will get it: a JSON string is taken as
// the payload's text (what the CLI sends), any other JSON value as written.
func payloadText(raw json.RawMessage) []byte {
	var text string
	if json.Unmarshal(raw, &text) == nil {
		return []byte(text)
	}
	return raw
}

func writeSchedulerError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		admin.WriteError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, ErrLimit):
		admin.WriteError(w, http.StatusConflict, err.Error())
	case errors.Is(err, ErrInvalid):
		admin.WriteError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, ErrNotSaved), errors.Is(err, ErrUnconfirmed):
		admin.WriteError(w, http.StatusServiceUnavailable, err.Error())
	default:
		admin.WriteError(w, http.StatusInternalServerError, err.Error())
	}
}
