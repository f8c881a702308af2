// Command egressd is an egress allowlist forward proxy for serverless function pods.
//
// Its subcommands serve the proxy (the default), check a configuration, and explain
// the decision for one target. main only wires the process to run, which tests call.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = ""

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes shared by the subcommands.
const (
	exitOK    = 0
	exitFail  = 1 // check found errors; explain denied; serve could not start
	exitUsage = 2 // bad flags or arguments, or (for explain) a config error
)

type command struct {
	name, args, summary string
	run                 func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"serve", "[--config FILE]", "run the proxy (the default when no command is given)", runServe},
		{"check", "[--config FILE]", "validate the config and every allowlist file; open no port", runCheck},
		{"explain", "[--config FILE] HOST[:PORT] | URL", "say whether a target is allowed, by which rule, or why not", runExplain},
		{"trace", "[--config FILE | --admin URL] URL", "follow a URL's redirects and check every hop against the policy", runTrace},
		{"denials", "[--admin URL] [--token-file FILE]", "show what a running egressd denied most recently", runDenials},
		{"secrets", "list|create|delete|init|rotate-key", "manage the encrypted secret store", runSecrets},
		{"schedules", "list|create|delete|run", "manage cron schedules of a running egressd", runSchedules},
		{"allowlist", "list|add|remove", "manage the allowlist rules kept through the admin API", runAllowlist},
		{"netns-setup", "[--dry-run | --remove]", "install the transparent-interception rules in this network namespace", runNetnsSetup},
		{"version", "", "print the version", runVersion},
	}
}

// run is egressd's whole command line: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (len(args[0]) > 0 && args[0][0] == '-' && !isHelp(args[0])) {
		return runServe(ctx, args, stdout, stderr)
	}
	if isHelp(args[0]) || args[0] == "help" {
		usage(stdout)
		return exitOK
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "egressd: unknown command %q\n\n", args[0])
	usage(stderr)
	return exitUsage
}

func isHelp(a string) bool { return a == "-h" || a == "-help" || a == "--help" }

func usage(w io.Writer) {
	fmt.Fprintf(w, "egressd: an egress allowlist proxy for function pods.\n\nUsage:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  egressd %-8s %-36s %s\n", c.name, c.args, c.summary)
	}
	fmt.Fprintf(w, "\nWith no --config, egressd uses the configuration built into it (configs/egressd.yaml).\nRun 'egressd COMMAND --help' for a command's flags.\n")
}

// newFlagSet returns a flag set for a subcommand whose errors and help go to stderr.
func newFlagSet(name, args, summary string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: %s\n\n%s.\n", strings.TrimSpace("egressd "+name+" "+args), summary)
		hasFlags := false
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			fmt.Fprintf(stderr, "\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parseFlags parses flags that may come before or after the positional arguments,
// and returns the positional ones. ok is false with the exit code when parsing ended
// the command (--help, or an error already printed).
func parseFlags(fs *flag.FlagSet, args []string) (positional []string, code int, ok bool) {
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, exitOK, false
			}
			return nil, exitUsage, false
		}
		args = fs.Args()
		if len(args) == 0 {
			return positional, 0, true
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}

func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("version", "", "print the version", stderr)
	pos, code, ok := parseFlags(fs, args)
	if !ok {
		return code
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "egressd version: unexpected argument %q\n", pos[0])
		return exitUsage
	}
	fmt.Fprintf(stdout, "egressd %s (%s)\n", versionString(), runtime.Version())
	return exitOK
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// group is a command with subcommands ("egressd secrets create KEY"): it parses the
// subcommand name, and reports usage errors and failures the same way for each.
type group struct {
	name, cmd string
	stderr    io.Writer
}

// splitGroup takes the subcommand off args. ok is false, with the exit code, when
// args hold no subcommand or ask for help (usageText is printed).
func splitGroup(name, usageText string, args []string, stderr io.Writer) (g group, rest []string, code int, ok bool) {
	if len(args) == 0 || isHelp(args[0]) {
		fmt.Fprint(stderr, usageText)
		if len(args) == 0 {
			return group{}, nil, exitUsage, false
		}
		return group{}, nil, exitOK, false
	}
	return group{name: name, cmd: args[0], stderr: stderr}, args[1:], 0, true
}

func (g group) flagSet() *flag.FlagSet {
	return newFlagSet(g.name+" "+g.cmd, "", "Run 'egressd "+g.name+" --help' for the commands", g.stderr)
}

// usage reports a usage error.
func (g group) usage(msg string) int {
	fmt.Fprintf(g.stderr, "egressd %s %s: %s\n", g.name, g.cmd, msg)
	return exitUsage
}

// fail reports a failure.
func (g group) fail(err error) int {
	fmt.Fprintf(g.stderr, "egressd %s %s: %v\n", g.name, g.cmd, err)
	return exitFail
}

// checkArgs checks that the subcommand is known and got its number of arguments.
func (g group) checkArgs(pos []string, want map[string]int) (int, bool) {
	n, known := want[g.cmd]
	if !known {
		return g.usage("unknown command; run 'egressd " + g.name + " --help'"), false
	}
	if len(pos) != n {
		return g.usage(fmt.Sprintf("takes %d argument(s), got %d", n, len(pos))), false
	}
	return 0, true
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
