package main

import (
	"context"
	"fmt"
	"io"

	"github.com/egressd/egressd/policy"
)

func runCheck(_ context.Context, args []string, stdout, stderr io.Writer) int {
	c, fsys, code, ok := configCommand("check", "Validate the config and every allowlist file without opening any port",
		"egressd check: the configuration has errors", args, stderr)
	if !ok {
		return code
	}
	res, err := policy.Load(fsys, c.Allowlist, policyOptions(c))
	if err != nil {
		printProblems(stderr, err)
		n := 1
		if ps, ok := err.(policy.Problems); ok {
			n = len(ps)
		}
		fmt.Fprintf(stderr, "egressd check: %d %s in the allowlist\n", n, plural(n, "error", "errors"))
		return exitFail
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w.Error())
	}
	n := len(res.Matcher.Rules())
	fmt.Fprintf(stdout, "ok: %d %s from %d %s, %d %s\n", n, plural(n, "rule", "rules"),
		len(res.Files), plural(len(res.Files), "file", "files"), len(res.Warnings), plural(len(res.Warnings), "warning", "warnings"))
	return exitOK
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
