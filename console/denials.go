package console

import (
	"net/http"
	"net/url"
	"strings"
	"time"
)

type denialRow struct {
	Target     string
	Count      int64
	FirstSeen  time.Time `json:"first_seen"`
	LastSeen   time.Time `json:"last_seen"`
	LastReason string    `json:"last_reason"`
	LastHint   string    `json:"last_hint"`
	LastClient string    `json:"last_client"`
	Rule       string
	ReportOnly bool `json:"report_only"`
}

// denials is the Denials page: the recent denials, newest first, filtered by text,
// each with an "allow" button for the rule that would allow it.
func (c *Console) denials(w http.ResponseWriter, r *http.Request, s session) {
	filter := strings.TrimSpace(r.URL.Query().Get("q"))
	var list struct{ Denials []denialRow }
	data := map[string]any{"CSRF": s.csrf, "Page": "denials", "Title": "Denials", "Filter": filter,
		"Message": r.URL.Query().Get("msg"), "Error": r.URL.Query().Get("err")}
	if err := c.call(r, http.MethodGet, "/v1/denials", nil, &list); err != nil {
		data["Error"] = err.Error()
	}
	rows := list.Denials[:0:0]
	for _, d := range list.Denials {
		if filter == "" || strings.Contains(strings.ToLower(d.Target+" "+d.LastReason+" "+d.LastHint+" "+d.LastClient), strings.ToLower(filter)) {
			rows = append(rows, d)
		}
	}
	data["Denials"] = rows
	c.render(w, http.StatusOK, "denials.html", data)
}

// denialsAllow asks for a confirmation, then adds the rule through the API.
func (c *Console) denialsAllow(w http.ResponseWriter, r *http.Request, s session) {
	rule := strings.TrimSpace(r.PostFormValue("rule"))
	if r.PostFormValue("confirm") != "yes" {
		c.render(w, http.StatusOK, "confirm.html", map[string]any{"CSRF": s.csrf, "Page": "denials", "Title": "Allow " + rule,
			"Action": "/denials/allow", "Name": "rule", "Value": rule, "Back": "/denials", "Button": "Yes, allow",
			"Question": "Add " + rule + " to the allowlist? Every function behind this egressd may then reach it."})
		return
	}
	q := url.Values{}
	if err := c.call(r, http.MethodPost, "/v1/allowlist", map[string]string{"rule": rule}, nil); err != nil {
		q.Set("err", err.Error())
	} else {
		q.Set("msg", rule+" allowed.")
	}
	http.Redirect(w, r, "/denials?"+q.Encode(), http.StatusSeeOther)
}
