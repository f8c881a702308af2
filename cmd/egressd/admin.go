package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/egressd/egressd/admin"
	"github.com/egressd/egressd/diag"
	"github.com/egressd/egressd/guard"
	"github.com/egressd/egressd/internal/reload"
	"github.com/egressd/egressd/managed"
	"github.com/egressd/egressd/originate"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/proxy"
)

// liveExemption exempts from the guard what the policy in force (current's answer at
// each check) covers.
func liveExemption(current func() *policy.Matcher) guard.Exempter {
	return guard.ExemptFunc(func(a netip.Addr) bool { return current().Exempt(a) })
}

// adminHandler builds the admin API with the diagnostics endpoints.
func adminHandler(token string, tracer *diag.Tracer, denials *diag.Denials, reloader *reload.Reloader, p *proxy.Proxy) (*admin.Handler, error) {
	h, err := admin.New(token)
	if err != nil {
		return nil, err
	}
	h.Handle("GET /v1/trace", diag.TraceHandler(tracer))
	h.Handle("GET /v1/denials", diag.DenialsHandler(denials))
	h.Handle("GET /v1/policy", policyHandler(reloader, p))
	return h, nil
}

type ruleJSON struct {
	Rule string `json:"rule"`
	File string `json:"file"`
	Line int    `json:"line"`
}

type reloadJSON struct {
	Time     time.Time `json:"time"`
	OK       bool      `json:"ok"`
	Errors   []string  `json:"errors"`
	Warnings []string  `json:"warnings"`
}

// policyHandler serves GET /v1/policy: the rules in force and how the last reload went.
func policyHandler(reloader *reload.Reloader, p *proxy.Proxy) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		m := p.Policy()
		rules := []ruleJSON{}
		var ports []uint16
		if m != nil {
			for _, r := range m.Rules() {
				rules = append(rules, ruleJSON{r.Text, r.File, r.Line})
			}
			ports = m.AllowedPorts()
		}
		last := reloadJSON{Errors: []string{}, Warnings: []string{}}
		if st := reloader.Status(); st != nil {
			last.Time, last.OK = st.Time.UTC(), st.OK
			for _, e := range st.Errors {
				last.Errors = append(last.Errors, e.Error())
			}
			for _, e := range st.Warnings {
				last.Warnings = append(last.Warnings, e.Error())
			}
		}
		admin.WriteJSON(w, http.StatusOK, map[string]any{"rules": rules, "allowed_ports": ports, "last_reload": last,
			"upstreams": upstreamsJSON(p.Upstreams())})
	})
}

// upstreamJSON is what /v1/policy says of an upstreams entry: names of secrets,
// never values.
type upstreamJSON struct {
	Host              string   `json:"host"`
	Port              uint16   `json:"port"`
	ClientCertificate string   `json:"client_certificate,omitempty"`
	ClientKey         string   `json:"client_key,omitempty"`
	CA                string   `json:"ca,omitempty"`
	ServerName        string   `json:"server_name,omitempty"`
	InjectHeaders     []string `json:"inject_headers"`
	Secrets           []string `json:"secrets"`
}

func upstreamsJSON(t *originate.Table) []upstreamJSON {
	out := []upstreamJSON{}
	for _, e := range t.Entries() {
		out = append(out, upstreamJSON{Host: e.Host, Port: e.Port, ClientCertificate: e.TLS.ClientCertificate, ClientKey: e.TLS.ClientKey,
			CA: e.TLS.CA, ServerName: e.TLS.ServerName, InjectHeaders: append([]string{}, e.HeaderNames()...), Secrets: append([]string{}, e.SecretNames()...)})
	}
	return out
}

// allowlistRoutes serves the managed allowlist: GET /v1/allowlist (every rule in
// force with its source, and the managed ones), POST /v1/allowlist {"rule"},
// DELETE /v1/allowlist/{rule}. A change is in force when it is answered.
func allowlistRoutes(h *admin.Handler, store managed.Store, reloader *reload.Reloader, p *proxy.Proxy) {
	h.Handle("GET /v1/allowlist", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		rules, err := store.List()
		if err != nil {
			admin.WriteError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		inForce := []ruleJSON{}
		if m := p.Policy(); m != nil {
			for _, r := range m.Rules() {
				inForce = append(inForce, ruleJSON{r.Text, r.File, r.Line})
			}
		}
		admin.WriteJSON(w, http.StatusOK, map[string]any{"managed": append([]string{}, rules...), "rules": inForce})
	}))
	h.Handle("POST /v1/allowlist", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Rule string `json:"rule"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 8192)).Decode(&body); err != nil || body.Rule == "" {
			admin.WriteError(w, http.StatusBadRequest, `the body must be JSON: {"rule": "api.example.com"}`)
			return
		}
		if err := store.Add(body.Rule); err != nil {
			writeManagedError(w, err)
			return
		}
		reloader.Load()
		admin.WriteJSON(w, http.StatusCreated, map[string]string{"rule": strings.TrimSpace(body.Rule), "source": policy.ManagedSource})
	}))
	h.Handle("DELETE /v1/allowlist/{rule...}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rule := r.PathValue("rule")
		err := store.Remove(rule)
		if errors.Is(err, managed.ErrNotFound) {
			if m := p.Policy(); m != nil {
				for _, fr := range m.Rules() {
					if fr.Text == rule && fr.File != policy.ManagedSource {
						admin.WriteError(w, http.StatusConflict, fmt.Sprintf("%s comes from %s: file rules belong to their file (a ConfigMap); edit it there", rule, fr.Location()))
						return
					}
				}
			}
		}
		if err != nil {
			writeManagedError(w, err)
			return
		}
		reloader.Load()
		w.WriteHeader(http.StatusNoContent)
	}))
}

func writeManagedError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, managed.ErrInvalid):
		admin.WriteError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, managed.ErrExists):
		admin.WriteError(w, http.StatusConflict, err.Error())
	case errors.Is(err, managed.ErrNotFound):
		admin.WriteError(w, http.StatusNotFound, err.Error())
	default:
		admin.WriteError(w, http.StatusServiceUnavailable, err.Error())
	}
}
