package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strings"

	"github.com/egressd/egressd/originate"
	"github.com/egressd/egressd/policy"
)

func runExplain(_ context.Context, args []string, stdout, stderr io.Writer) int {
	const summary = "Say whether a target is allowed and by which rule, or why not and what to add.\nWithout a port, 443 is assumed; a URL gives its scheme's port. Exit status: 0 allowed, 1 denied, 2 usage or config error"
	fs := newFlagSet("explain", "[--config FILE] HOST[:PORT] | URL", summary, stderr)
	cfgPath := configFlag(fs)
	pos, code, ok := parseFlags(fs, args)
	if !ok {
		return code
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "egressd explain: give exactly one target, such as api.example.com:443 or https://api.example.com/")
		return exitUsage
	}
	host, port, err := parseExplainTarget(pos[0])
	if err != nil {
		fmt.Fprintf(stderr, "egressd explain: %v\n", err)
		return exitUsage
	}
	c, fsys, err := loadConfig(*cfgPath)
	if err != nil {
		printProblems(stderr, err)
		return exitUsage
	}
	res, err := loadPolicy(c, fsys)
	if err != nil {
		printProblems(stderr, err)
		return exitUsage
	}
	d := res.Matcher.Decide(host, port)
	table, _ := originate.Compile(c.UpstreamSpecs())
	if e := table.Lookup(d.Host); e != nil {
		fmt.Fprintf(stdout, "upstream: %s (%s); a plain http:// request is decided as %s:%d\n", e.Describe(), e.Host, d.Host, e.Port)
	}
	if d.Allow {
		fmt.Fprintf(stdout, "allowed: %s\nrule: %s (%s)\n", d.Target(), d.Rule.Text, d.Rule.Location())
		return exitOK
	}
	fmt.Fprintf(stdout, "denied: %s: %s\nhint: %s\n", d.Target(), d.Reason, d.Hint())
	if c.Mode == "report" {
		fmt.Fprintln(stdout, "note: mode is report, so the proxy lets this through and logs it as would-deny")
	}
	return exitFail
}

// parseExplainTarget accepts HOST, HOST:PORT, [V6]:PORT and URLs.
func parseExplainTarget(s string) (string, uint16, error) {
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return "", 0, fmt.Errorf("invalid URL %q: %v", s, err)
		}
		if u.Hostname() == "" {
			return "", 0, fmt.Errorf("the URL %q has no host; write a URL such as https://api.example.com/", s)
		}
		return policy.URLTarget(u)
	}
	host, port, err := policy.SplitTarget(s, 443)
	if err == nil && host == "" {
		err = fmt.Errorf("%q has no host; write a target such as api.example.com:443", s)
	}
	return host, port, err
}
