package console

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

// call sends one request to the admin API in process and decodes its answer into
// out (if not nil); an answer other than 2xx is an error with the API's message.
func (c *Console) call(r *http.Request, method, path string, in, out any) error {
	var body bytes.Buffer
	if in != nil {
		json.NewEncoder(&body).Encode(in)
	}
	req, err := http.NewRequestWithContext(r.Context(), method, path, &body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.opts.Token)
	req.Header.Set("Content-Type", "application/json")
	rec := &recorder{header: http.Header{}, status: http.StatusOK}
	c.opts.API.ServeHTTP(rec, req)
	if rec.status < 200 || rec.status > 299 {
		var e struct{ Error string }
		json.Unmarshal(rec.body.Bytes(), &e)
		if e.Error == "" {
			e.Error = fmt.Sprintf("the admin API answered %d", rec.status)
		}
		return errors.New(e.Error)
	}
	if out != nil && rec.body.Len() > 0 {
		return json.Unmarshal(rec.body.Bytes(), out)
	}
	return nil
}

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
