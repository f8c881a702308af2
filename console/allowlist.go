package console

import (
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

type ruleRow struct {
	Rule, File string
	Line       int
}

// allowlist is the Domain allowlist page: every rule in force with its source,
// the managed ones removable, and a form to add one.
func (c *Console) allowlist(w http.ResponseWriter, r *http.Request, s session) {
	var list struct {
		Managed []string
		Rules   []ruleRow
	}
	data := map[string]any{"CSRF": s.csrf, "Page": "allowlist", "Title": "Domain allowlist",
		"Message": r.URL.Query().Get("msg"), "Error": r.URL.Query().Get("err"), "Offer": r.URL.Query().Get("offer")}
	if err := c.call(r, http.MethodGet, "/v1/allowlist", nil, &list); err != nil {
		data["Error"] = err.Error()
	}
	data["Rules"] = list.Rules
	c.render(w, http.StatusOK, "allowlist.html", data)
}

// allowlistAdd adds a managed rule through the API and comes back to the page
// with what happened: the API's own message for a rule it refuses, and for a
// plain domain the pitfall (its subdomains are other hosts).
func (c *Console) allowlistAdd(w http.ResponseWriter, r *http.Request, _ session) {
	rule := strings.TrimSpace(r.PostFormValue("rule"))
	q := url.Values{}
	start := c.opts.Now()
	if err := c.call(r, http.MethodPost, "/v1/allowlist", map[string]string{"rule": rule}, nil); err != nil {
		q.Set("err", err.Error())
	} else {
		q.Set("msg", fmt.Sprintf("%s added; in force after %s.", rule, c.opts.Now().Sub(start).Round(time.Microsecond)))
		// A plain name allows that host alone: say so, and offer its subdomains.
		host, _, _ := strings.Cut(rule, ":")
		if _, ipErr := netip.ParseAddr(host); ipErr != nil && !strings.HasPrefix(host, "*.") && strings.Contains(host, ".") && !strings.ContainsAny(host, "/[") {
			q.Set("offer", host)
		}
	}
	http.Redirect(w, r, "/allowlist?"+q.Encode(), http.StatusSeeOther)
}

// allowlistRemove removes a managed rule through the API.
func (c *Console) allowlistRemove(w http.ResponseWriter, r *http.Request, _ session) {
	rule := strings.TrimSpace(r.PostFormValue("rule"))
	q := url.Values{}
	if err := c.call(r, http.MethodDelete, "/v1/allowlist/"+url.PathEscape(rule), nil, nil); err != nil {
		q.Set("err", err.Error())
	} else {
		q.Set("msg", rule+" removed.")
	}
	http.Redirect(w, r, "/allowlist?"+q.Encode(), http.StatusSeeOther)
}
