package console

import (
	"net/http"
	"time"
)

// overview is the first page after sign-in: the version and the policy in force
// with how its last reload went.
func (c *Console) overview(w http.ResponseWriter, r *http.Request, s session) {
	var policy struct {
		Rules []struct {
			Rule, File string
			Line       int
		}
		LastReload struct {
			Time   time.Time
			OK     bool
			Errors []string
		} `json:"last_reload"`
	}
	data := map[string]any{"CSRF": s.csrf, "Version": c.opts.Version, "Page": "overview"}
	if err := c.call(r, http.MethodGet, "/v1/policy", nil, &policy); err != nil {
		data["Error"] = err.Error()
	}
	files := map[string]bool{}
	for _, rule := range policy.Rules {
		files[rule.File] = true
	}
	data["Rules"], data["Files"], data["Reload"] = len(policy.Rules), len(files), policy.LastReload
	c.status(data)
	c.render(w, http.StatusOK, "overview.html", data)
}
