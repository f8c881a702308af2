package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

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
	n := uniqueRules(a.proxy.Policy().Rules())
	fmt.Fprintf(stdout, "ok: %d %s from %d %s, %d %s\n", n, plural(n, "rule", "rules"),
		len(st.Files), plural(len(st.Files), "file", "files"), len(st.Warnings), plural(len(st.Warnings), "warning", "warnings"))
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
