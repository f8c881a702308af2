package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strings"
)

const allowlistUsage = `Usage: egressd allowlist COMMAND [flags]

Commands:
  list [--json]      the rules in force, with where each comes from (file:line, or managed:RULE)
  add RULE           add a managed rule (validated as a file rule is), in force at once
  remove RULE        remove a managed rule; rules from files belong to their files

They talk to the running egressd's admin API: --admin URL, --token-file FILE or EGRESSD_ADMIN_TOKEN.
`

func runAllowlist(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g, args, code, ok := splitGroup("allowlist", allowlistUsage, args, stderr)
	if !ok {
		return code
	}
	fs := g.flagSet()
	af := addAdminFlags(fs)
	asJSON := fs.Bool("json", false, "list: print JSON")
	pos, code, ok := parseFlags(fs, args)
	if !ok {
		return code
	}
	if code, ok := g.checkArgs(pos, map[string]int{"list": 0, "add": 1, "remove": 1}); !ok {
		return code
	}
	c, err := af.client()
	if err != nil {
		return g.usage(err.Error())
	}
	switch g.cmd {
	case "list":
		var resp struct {
			Managed []string `json:"managed"`
			Rules   []struct {
				Rule string `json:"rule"`
				File string `json:"file"`
				Line int    `json:"line"`
			} `json:"rules"`
		}
		if err := c.get(ctx, "/v1/allowlist", &resp); err != nil {
			return g.fail(err)
		}
		if *asJSON {
			printJSON(stdout, resp)
			return exitOK
		}
		for _, r := range resp.Rules {
			where := fmt.Sprintf("%s:%d", r.File, r.Line)
			if r.File == "managed" {
				where = "managed"
			}
			fmt.Fprintf(stdout, "%-40s %s\n", r.Rule, where)
		}
	case "add":
		body, _ := json.Marshal(map[string]string{"rule": pos[0]})
		if err := c.do(ctx, "POST", "/v1/allowlist", bytes.NewReader(body), nil); err != nil {
			return g.fail(err)
		}
		fmt.Fprintf(stdout, "added %s (managed)\n", strings.TrimSpace(pos[0]))
	case "remove":
		if err := c.do(ctx, "DELETE", "/v1/allowlist/"+url.PathEscape(strings.TrimSpace(pos[0])), nil, nil); err != nil {
			return g.fail(err)
		}
		fmt.Fprintf(stdout, "removed %s\n", strings.TrimSpace(pos[0]))
	}
	return exitOK
}
