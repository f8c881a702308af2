package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/egressd/egressd/diag"
	"github.com/egressd/egressd/dialer"
	"github.com/egressd/egressd/guard"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/resolver"
)

func runTrace(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	const summary = "Follow URL's redirects hop by hop and check every hop against the policy.\n" +
		"With --config (or the built-in config) it fetches from this machine, under the private-address guard;\n" +
		"with --admin the running egressd traces. Exit status: 0 the whole chain is allowed and ends in an answer,\n" +
		"1 a hop is denied, the chain loops, fails or is too long, 2 usage or config error"
	fs := newFlagSet("trace", "[--config FILE | --admin URL] [--json] [--max-hops N] [--follow-denied] URL", summary, stderr)
	cfgPath := configFlag(fs)
	af := addAdminFlags(fs)
	asJSON := fs.Bool("json", false, "print the trace as JSON")
	maxHops := fs.Int("max-hops", diag.DefaultMaxHops, "follow at most `N` requests")
	hopTimeout := fs.Duration("timeout", 10*time.Second, "time allowed for each hop")
	followDenied := fs.Bool("follow-denied", false, "fetch hops the policy denies too (by default a trace stops at the first)")
	pos, code, ok := parseFlags(fs, args)
	if !ok {
		return code
	}
	if len(pos) != 1 || *maxHops < 1 {
		fmt.Fprintln(stderr, "egressd trace: give one URL, such as https://example.com/, and a --max-hops of at least 1")
		return exitUsage
	}
	viaAdmin := false
	fs.Visit(func(f *flag.Flag) { viaAdmin = viaAdmin || f.Name == "admin" || f.Name == "token-file" })

	var tr *diag.Trace
	if viaAdmin {
		c, err := af.client()
		if err != nil {
			fmt.Fprintln(stderr, "egressd trace:", err)
			return exitUsage
		}
		tr = new(diag.Trace)
		q := "/v1/trace?url=" + url.QueryEscape(pos[0])
		if *followDenied {
			q += "&follow_denied=true"
		}
		if err := c.get(ctx, q, tr); err != nil {
			fmt.Fprintln(stderr, "egressd trace:", err)
			return exitUsage
		}
	} else {
		tracer, err := localTracer(*cfgPath)
		if err != nil {
			printProblems(stderr, err)
			return exitUsage
		}
		tracer.MaxHops, tracer.HopTimeout, tracer.FollowDenied = *maxHops, *hopTimeout, *followDenied
		if tr, err = tracer.Trace(ctx, pos[0]); err != nil {
			fmt.Fprintln(stderr, "egressd trace:", err)
			return exitUsage
		}
	}
	if *asJSON {
		printJSON(stdout, tr)
	} else {
		printTrace(stdout, tr)
	}
	if tr.Allowed {
		return exitOK
	}
	return exitFail
}

// localTracer builds a tracer from a config: its policy, its resolver settings and
// its guard, as the daemon would use them.
func localTracer(cfgPath string) (*diag.Tracer, error) {
	c, fsys, err := loadConfig(cfgPath)
	if err != nil {
		return nil, err
	}
	res, err := loadPolicy(c, fsys)
	if err != nil {
		return nil, err
	}
	r, err := newResolver(c, nil)
	if err != nil {
		return nil, err
	}
	m := res.Matcher
	current := func() *policy.Matcher { return m }
	d := dialer.New(dialer.Options{
		Resolver: r, Guard: guard.New(allowPrivate(c)), Exempt: liveExemption(current), Timeout: c.Proxy.DialTimeout,
	})
	// The configured listeners are egressd's own, as they are to the proxy: a trace
	// never fetches from them.
	for _, addr := range []string{c.Proxy.Listen, c.Metrics.Listen, c.Admin.Listen, c.DNS.Listen} {
		if tcp, err := net.ResolveTCPAddr("tcp", addr); err == nil && addr != "" {
			d.AddOwn(tcp)
		}
	}
	return &diag.Tracer{Policy: current, Dial: d.DialContext}, nil
}

func printTrace(w io.Writer, tr *diag.Trace) {
	for i, h := range tr.Hops {
		status := "-"
		if h.Status != 0 {
			status = strconv.Itoa(h.Status)
		}
		if h.Method == "" {
			fmt.Fprintf(w, "%d. %s (not fetched)\n", i+1, h.URL)
		} else {
			fmt.Fprintf(w, "%d. %s %s -> %s\n", i+1, h.Method, h.URL, status)
		}
		if h.Allowed {
			fmt.Fprintf(w, "   %s: allowed by %s (%s)\n", h.Target, h.Rule, h.RuleAt)
		} else {
			fmt.Fprintf(w, "   %s: DENIED: %s; hint: %s\n", h.Target, h.Reason, h.Hint)
		}
		if h.Error != "" {
			fmt.Fprintf(w, "   error: %s\n", h.Error)
		}
		if h.Location != "" {
			fmt.Fprintf(w, "   redirects to %s\n", h.Location)
		}
	}
	switch tr.End {
	case "answer":
		fmt.Fprintf(w, "end: an answer that is not a redirect\n")
	case "loop":
		fmt.Fprintf(w, "end: the chain loops back to a URL it already requested\n")
	case "denied":
		fmt.Fprintf(w, "end: stopped at a denied hop, which was not fetched (--follow-denied fetches it)\n")
	case "too many hops":
		fmt.Fprintf(w, "end: more than %d hops\n", len(tr.Hops))
	default:
		fmt.Fprintf(w, "end: %s\n", tr.End)
	}
	switch {
	case len(tr.Add) > 0:
		fmt.Fprintf(w, "add these rules so that the whole chain passes:\n")
		for _, r := range tr.Add {
			fmt.Fprintf(w, "  %s\n", r)
		}
	case tr.Allowed:
		fmt.Fprintf(w, "the whole chain is already allowed\n")
	default:
		fmt.Fprintf(w, "every hop is allowed, but the chain does not end in an answer\n")
	}
}

func runDenials(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("denials", "[--admin URL] [--token-file FILE] [--limit N] [--json]",
		"Show the targets a running egressd denied most recently, newest first", stderr)
	af := addAdminFlags(fs)
	limit := fs.Int("limit", 50, "show at most `N` targets (0: all)")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, code, ok := parseFlags(fs, args)
	if !ok {
		return code
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "egressd denials: unexpected argument %q\n", pos[0])
		return exitUsage
	}
	c, err := af.client()
	if err != nil {
		fmt.Fprintln(stderr, "egressd denials:", err)
		return exitUsage
	}
	var resp struct {
		Denials []diag.Denial `json:"denials"`
	}
	if err := c.get(ctx, "/v1/denials?limit="+strconv.Itoa(*limit), &resp); err != nil {
		fmt.Fprintln(stderr, "egressd denials:", err)
		return exitFail
	}
	if *asJSON {
		printJSON(stdout, resp)
		return exitOK
	}
	if len(resp.Denials) == 0 {
		fmt.Fprintln(stdout, "no denials")
		return exitOK
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tCOUNT\tLAST SEEN (UTC)\tFIRST SEEN (UTC)\tCLIENT\tREASON\tHINT")
	for _, d := range resp.Denials {
		reason := d.LastReason
		if d.ReportOnly {
			reason += " (report mode: let through)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", d.Target, d.Count,
			d.LastSeen.UTC().Format(time.DateTime), d.FirstSeen.UTC().Format(time.DateTime), d.LastClient, reason, d.LastHint)
	}
	tw.Flush()
	return exitOK
}

// newResolver builds egressd's resolver from the config's dns section.
func newResolver(c *config.Config, opts *resolver.Options) (*resolver.Resolver, error) {
	o := resolver.Options{}
	if opts != nil {
		o = *opts
	}
	o.Upstreams, o.ResolvConf, o.HostsFile = c.DNS.Upstreams, c.DNS.ResolvConf, c.DNS.HostsFile
	o.Timeout, o.Attempts, o.MinTTL, o.MaxTTL, o.MaxEntries = c.DNS.Timeout, c.DNS.Attempts, c.DNS.MinTTL, c.DNS.MaxTTL, c.DNS.CacheSize
	return resolver.New(o)
}

// allowPrivate returns dns.allow_private as prefixes (validated with the config).
func allowPrivate(c *config.Config) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range c.DNS.AllowPrivate {
		if p, err := config.ParsePrefixOrAddr(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}
