package scheduler

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// TestFormEndpoints: what the console's schedule form reads as the operator types.
func TestFormEndpoints(t *testing.T) {
	s, _ := newTestScheduler(t, Options{MaxSchedules: 10},
		Function{"live", "http://127.0.0.1:1/", StateProductive}, Function{"wip", "http://127.0.0.1:1/", StateDraft})
	mux := http.NewServeMux()
	AdminRoutes(s, func(p string, h http.Handler) { mux.Handle(p, h) })
	get := func(path string) (int, map[string]any) {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		var v map[string]any
		json.Unmarshal(rec.Body.Bytes(), &v)
		return rec.Code, v
	}
	code, v := get("/v1/schedules/next?cron=" + url.QueryEscape("30 6 * * 1-5"))
	next, _ := v["next"].([]any)
	// t0 is Thursday 2026-11-26 10:00:30 UTC: next Friday, Monday, Tuesday 06:30.
	if code != 200 || len(next) != 3 || next[0] != "2026-11-27T06:30:00Z" || next[1] != "2026-11-30T06:30:00Z" {
		t.Errorf("next of 30 6 * * 1-5: %d %v", code, v)
	}
	code, v = get("/v1/schedules/next?cron=" + url.QueryEscape("* * * * * *"))
	if msg, _ := v["error"].(string); code != 400 || !strings.Contains(msg, "six fields") || !strings.Contains(msg, "valid examples") {
		t.Errorf("a six-field cron: %d %v", code, v)
	}
	code, v = get("/v1/functions")
	fns, _ := v["functions"].([]any)
	if code != 200 || len(fns) != 2 || v["max_schedules"] != float64(10) || !strings.Contains(toJSON(fns), `"state":"draft"`) || strings.Contains(toJSON(fns), "127.0.0.1") {
		t.Errorf("functions: %d %v; want both with their states, no URLs", code, v)
	}
}

func toJSON(v any) string { b, _ := json.Marshal(v); return string(b) }
