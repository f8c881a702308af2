package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/egressd/egressd/policy"
)

// runCheck builds everything serve would build before it opens a port (newApp):
// the config, the allowlist, the token files, the secrets file and its key, the
// functions file and the state, so that it fails exactly when serve would refuse to
// start, ports in use aside. It writes nothing and opens no port.
func runCheck(_ context.Context, args []string, stdout, stderr io.Writer) int {
	c, fsys, code, ok := configCommand("check", "Validate the config, the allowlist and every file serve needs, without opening any port",
		"egressd check: the configuration has errors", args, stderr)
	if !ok {
		return code
	}
	a, err := newApp(c, fsys, slog.New(slog.DiscardHandler), false)
	if err != nil {
		var problems policy.Problems
		if errors.As(err, &problems) {
			printProblems(stderr, problems)
			fmt.Fprintf(stderr, "egressd check: %d %s in the allowlist\n", len(problems), plural(len(problems), "error", "errors"))
			return exitFail
		}
		fmt.Fprintf(stderr, "egressd check: %v\n", err)
		return exitFail
	}
	st := a.reloader.Status()
	for _, w := range st.Warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w.Error())
	}
	for _, w := range upstreamWarnings(a) {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	n := uniqueRules(a.proxy.Policy().Rules())
	nw := len(st.Warnings) + len(upstreamWarnings(a))
	fmt.Fprintf(stdout, "ok: %d %s from %d %s, %d %s\n", n, plural(n, "rule", "rules"),
		len(st.Files), plural(len(st.Files), "file", "files"), nw, plural(nw, "warning", "warnings"))
	return exitOK
}

// uniqueRules counts rules by their text: a duplicate (a warning) is one rule.
func uniqueRules(rules []policy.Rule) int {
	seen := map[string]bool{}
	for _, r := range rules {
		seen[r.Text] = true
	}
	return len(seen)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// upstreamWarnings are what check says of the upstreams entries: headers reach only
// plain-HTTP requests, and an entry whose target the allowlist denies does nothing.
func upstreamWarnings(a *app) []string {
	var out []string
	m := a.proxy.Policy()
	for _, e := range a.proxy.Upstreams().Entries() {
		if names := e.HeaderNames(); len(names) > 0 {
			out = append(out, fmt.Sprintf("upstreams %s: %s reach requests sent as http://%s/... only (egressd makes the TLS); "+
				"an https:// URL goes through a CONNECT tunnel, which egressd cannot see into, and gets no header",
				e.Host, strings.Join(names, ", "), strings.TrimPrefix(e.Host, "*.")))
		}
		if host := strings.TrimPrefix(e.Host, "*."); !strings.HasPrefix(e.Host, "*.") {
			if d := m.Decide(host, e.Port); !d.Allow {
				out = append(out, fmt.Sprintf("upstreams %s: the allowlist denies %s (%s), so requests to it are refused; add %s",
					e.Host, d.Target(), d.Reason, d.SuggestedRule()))
			}
		}
	}
	return out
}
