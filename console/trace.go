package console

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

type traceHop struct {
	URL, Method, Target, Rule, Reason, Hint, Location, Error string
	RuleAt                                                   string `json:"rule_at"`
	Allowed                                                  bool
	Status                                                   int
}

type traceResult struct {
	URL     string
	Hops    []traceHop
	End     string
	Allowed bool
	Add     []string
}

// trace is the Trace page: a URL's redirect chain hop by hop, with the rules to
// add and one button that adds them all. follow_denied lets the trace go on past a
// denied hop, to see the whole chain.
func (c *Console) trace(w http.ResponseWriter, r *http.Request, s session) {
	raw := strings.TrimSpace(r.URL.Query().Get("url"))
	follow := r.URL.Query().Get("follow_denied") == "true"
	data := map[string]any{"CSRF": s.csrf, "Page": "trace", "Title": "Trace", "URL": raw, "Follow": follow,
		"Message": r.URL.Query().Get("msg"), "Error": r.URL.Query().Get("err")}
	if raw != "" {
		q := url.Values{"url": {raw}}
		if follow {
			q.Set("follow_denied", "true")
		}
		var tr traceResult
		if err := c.call(r, http.MethodGet, "/v1/trace?"+q.Encode(), nil, &tr); err != nil {
			data["Error"] = err.Error()
		} else {
			data["Trace"] = tr
		}
	}
	c.render(w, http.StatusOK, "trace.html", data)
}

// traceAdd adds every rule a trace asked for, through the API, and traces again.
func (c *Console) traceAdd(w http.ResponseWriter, r *http.Request, _ session) {
	r.ParseForm()
	var added, failed []string
	for _, rule := range r.PostForm["rule"] {
		if err := c.call(r, http.MethodPost, "/v1/allowlist", map[string]string{"rule": rule}, nil); err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", rule, err))
		} else {
			added = append(added, rule)
		}
	}
	q := url.Values{"url": {r.PostFormValue("url")}}
	if len(added) > 0 {
		q.Set("msg", "Added "+strings.Join(added, ", ")+".")
	}
	if len(failed) > 0 {
		q.Set("err", strings.Join(failed, "; "))
	}
	http.Redirect(w, r, "/trace?"+q.Encode(), http.StatusSeeOther)
}
