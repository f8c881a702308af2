package main

import (
	"context"
	"fmt"
	"io"

	"github.com/egressd/egressd/policy"
)

func runCheck(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("check", "[--config FILE]", "Validate the config and every allowlist file without opening any port", stderr)
	cfgPath := configFlag(fs)
	pos, code, ok := parseFlags(fs, args)
	if !ok {
		return code
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "egressd check: unexpected argument %q\n", pos[0])
		return exitUsage
	}
	c, fsys, err := loadConfig(*cfgPath)
	if err != nil {
		printProblems(stderr, err)
		fmt.Fprintln(stderr, "egressd check: the configuration has errors")
		return exitFail
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
