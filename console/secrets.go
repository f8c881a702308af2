package console

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

type secretRow struct {
	Key     string
	Version int64
	Updated time.Time
	Default bool
}

// secrets is the Secret store page: keys, versions and update times, never a
// value; default secrets only when asked for.
func (c *Console) secrets(w http.ResponseWriter, r *http.Request, s session) {
	all := r.URL.Query().Get("all") == "true"
	var list struct{ Secrets []secretRow }
	path := "/v1/secrets"
	if all {
		path += "?all=true"
	}
	data := map[string]any{"CSRF": s.csrf, "Page": "secrets", "Title": "Secret store", "All": all,
		"Message": r.URL.Query().Get("msg"), "Error": r.URL.Query().Get("err")}
	if err := c.call(r, http.MethodGet, path, nil, &list); err != nil {
		data["Error"] = err.Error()
	}
	data["Secrets"] = list.Secrets
	c.render(w, http.StatusOK, "secrets.html", data)
}

// secretsCreate creates a secret through the API. The value goes to the API and
// nowhere else: not into the redirect, the page or a log.
func (c *Console) secretsCreate(w http.ResponseWriter, r *http.Request, _ session) {
	key := strings.TrimSpace(r.PostFormValue("key"))
	var info struct{ Version int64 }
	q := url.Values{}
	if err := c.call(r, http.MethodPost, "/v1/secrets", map[string]string{"key": key, "value": r.PostFormValue("value")}, &info); err != nil {
		q.Set("err", err.Error())
	} else {
		q.Set("msg", fmt.Sprintf("%s created (version %d). Its value is not shown again.", key, info.Version))
	}
	http.Redirect(w, r, "/secrets?"+q.Encode(), http.StatusSeeOther)
}

// secretsDelete asks for a confirmation naming the key, then deletes it.
func (c *Console) secretsDelete(w http.ResponseWriter, r *http.Request, s session) {
	key := strings.TrimSpace(r.PostFormValue("key"))
	if r.PostFormValue("confirm") != "yes" {
		c.render(w, http.StatusOK, "confirm.html", map[string]any{"CSRF": s.csrf, "Page": "secrets", "Title": "Delete " + key,
			"Action": "/secrets/delete", "Name": "key", "Value": key, "Back": "/secrets",
			"Question": "Delete the secret " + key + "? Functions reading it get 404 at once; the value cannot be brought back."})
		return
	}
	q := url.Values{}
	if err := c.call(r, http.MethodDelete, "/v1/secrets/"+url.PathEscape(key), nil, nil); err != nil {
		q.Set("err", err.Error())
	} else {
		q.Set("msg", key+" deleted.")
	}
	http.Redirect(w, r, "/secrets?"+q.Encode(), http.StatusSeeOther)
}
