package console

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"
)

type scheduleRow struct {
	ID, Function, Cron, Payload string
	State                       struct {
		LastRun     *time.Time `json:"last_run"`
		LastSkipped *time.Time `json:"last_skipped"`
		LastOutcome string     `json:"last_outcome"`
		LastError   string     `json:"last_error"`
		NextRun     time.Time  `json:"next_run"`
	}
}

// Preview is the payload's beginning, for the table.
func (s scheduleRow) Preview() string {
	if utf8.RuneCountInString(s.Payload) <= 60 {
		return s.Payload
	}
	return string([]rune(s.Payload)[:60]) + "…"
}

// Outcome is the STATE column: success, failure, skipped (the last slot came while
// a run was still going) or never run.
func (s scheduleRow) Outcome() string {
	if sk := s.State.LastSkipped; sk != nil && (s.State.LastRun == nil || sk.After(*s.State.LastRun)) {
		return "skipped"
	}
	if s.State.LastOutcome == "" {
		return "never run"
	}
	return s.State.LastOutcome
}

type functionRow struct{ Name, State string }

// schedules is the Schedule an Invocation page: the schedules with their last and
// next runs, and the form to create one.
func (c *Console) schedules(w http.ResponseWriter, r *http.Request, s session) {
	var list struct{ Schedules []scheduleRow }
	var fns struct {
		Functions    []functionRow
		MaxSchedules int `json:"max_schedules"`
	}
	data := map[string]any{"CSRF": s.csrf, "Page": "schedules", "Title": "Schedules",
		"Message": r.URL.Query().Get("msg"), "Error": r.URL.Query().Get("err"),
		"Form": map[string]string{"function": r.URL.Query().Get("function"), "cron": r.URL.Query().Get("cron"), "payload": r.URL.Query().Get("payload")}}
	if err := c.call(r, http.MethodGet, "/v1/schedules", nil, &list); err != nil {
		data["Error"] = err.Error()
	} else if err := c.call(r, http.MethodGet, "/v1/functions", nil, &fns); err != nil {
		data["Error"] = err.Error()
	}
	data["Schedules"], data["Functions"], data["Max"], data["Count"] = list.Schedules, fns.Functions, fns.MaxSchedules, len(list.Schedules)
	c.render(w, http.StatusOK, "schedules.html", data)
}

// schedulesCreate creates a schedule through the API; a refusal comes back with
// the API's message and the form as it was.
func (c *Console) schedulesCreate(w http.ResponseWriter, r *http.Request, _ session) {
	fn, expr, payload := r.PostFormValue("function"), strings.TrimSpace(r.PostFormValue("cron")), strings.TrimSpace(r.PostFormValue("payload"))
	body := map[string]any{"function": fn, "cron": expr}
	if payload != "" {
		body["payload"] = payload // as text, kept as typed; the API checks it is JSON
	}
	var sc scheduleRow
	q := url.Values{}
	if err := c.call(r, http.MethodPost, "/v1/schedules", body, &sc); err != nil {
		q.Set("err", err.Error())
		q.Set("function", fn)
		q.Set("cron", expr)
		q.Set("payload", payload)
	} else {
		q.Set("msg", fmt.Sprintf("Schedule %s created: %s on %q.", sc.ID, sc.Function, sc.Cron))
	}
	http.Redirect(w, r, "/schedules?"+q.Encode(), http.StatusSeeOther)
}

// schedulesRun invokes a schedule now, through the API, and waits for the result.
func (c *Console) schedulesRun(w http.ResponseWriter, r *http.Request, _ session) {
	id := r.PostFormValue("id")
	var sc scheduleRow
	q := url.Values{}
	if err := c.call(r, http.MethodPost, "/v1/schedules/"+url.PathEscape(id)+"/run", nil, &sc); err != nil {
		q.Set("err", err.Error())
	} else {
		q.Set("msg", fmt.Sprintf("Schedule %s ran: %s.", id, sc.Outcome()))
	}
	http.Redirect(w, r, "/schedules?"+q.Encode(), http.StatusSeeOther)
}

// schedulesDelete asks for a confirmation, then deletes the schedule.
func (c *Console) schedulesDelete(w http.ResponseWriter, r *http.Request, s session) {
	id := r.PostFormValue("id")
	if r.PostFormValue("confirm") != "yes" {
		c.render(w, http.StatusOK, "confirm.html", map[string]any{"CSRF": s.csrf, "Page": "schedules", "Title": "Delete schedule " + id,
			"Action": "/schedules/delete", "Name": "id", "Value": id, "Back": "/schedules",
			"Question": "Delete schedule " + id + "? It is gone for good: it will not run again and cannot be restored."})
		return
	}
	q := url.Values{}
	if err := c.call(r, http.MethodDelete, "/v1/schedules/"+url.PathEscape(id), nil, nil); err != nil {
		q.Set("err", err.Error())
	} else {
		q.Set("msg", "Schedule "+id+" deleted.")
	}
	http.Redirect(w, r, "/schedules?"+q.Encode(), http.StatusSeeOther)
}
