package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/egressd/egressd/configs"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/internal/jsonlog"
	"github.com/egressd/egressd/managed"
	"github.com/egressd/egressd/policy"
)

// configFlag adds --config to fs.
func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", "", "the configuration `file`; if empty, the built-in default configuration")
}

// loadConfig reads the config named by --config, or the embedded default, and
// returns it with the file system its allowlist paths refer to.
func loadConfig(path string) (*config.Config, policy.FS, error) {
	if path == "" {
		c, err := config.LoadFS(configs.FS, configs.DefaultFile)
		if c != nil {
			c.Builtin = true
		}
		return c, configs.FS, err
	}
	c, err := config.LoadFile(path)
	return c, policy.OSFiles{}, err
}

func policyOptions(c *config.Config) policy.Options {
	ports := make([]uint16, len(c.Proxy.AllowedPorts))
	for i, p := range c.Proxy.AllowedPorts {
		ports[i] = uint16(p)
	}
	return policy.Options{AllowedPorts: ports}
}

// newLogger returns the process logger described by the config.
func newLogger(c *config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.Log.Level)); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Log.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(jsonlog.NewHandler(w, opts))
}

func printProblems(w io.Writer, err error) {
	fmt.Fprintln(w, err)
}

// configCommand parses the flags of a command whose only flag is --config and that
// takes no arguments, and loads that config. ok is false with the exit code when the
// command ends here: --help, a usage error, or a config with errors (printed, then
// failNote).
func configCommand(name, summary, failNote string, args []string, stderr io.Writer) (c *config.Config, fsys policy.FS, code int, ok bool) {
	fs := newFlagSet(name, "[--config FILE]", summary, stderr)
	cfgPath := configFlag(fs)
	pos, code, ok := parseFlags(fs, args)
	if !ok {
		return nil, nil, code, false
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "egressd %s: unexpected argument %q\n", name, pos[0])
		return nil, nil, exitUsage, false
	}
	c, fsys, err := loadConfig(*cfgPath)
	if err != nil {
		printProblems(stderr, err)
		fmt.Fprintln(stderr, failNote)
		return nil, nil, exitFail, false
	}
	return c, fsys, 0, true
}

// loadPolicy loads the config's allowlist as serve does: its files and, in
// single-node mode, the managed rules' file. For explain and a local trace.
func loadPolicy(c *config.Config, fsys policy.FS) (policy.Result, error) {
	files, problems := policy.ReadFiles(fsys, c.Allowlist)
	if f := c.ManagedAllowlist.File; f != "" {
		rules, err := managed.NewFile(f).List()
		if err != nil {
			problems = append(problems, policy.Problem{File: policy.ManagedSource, Msg: err.Error()})
		}
		files = append(files, policy.File{Name: policy.ManagedSource, Data: managed.Text(rules)})
	}
	if len(problems) > 0 {
		return policy.Result{}, problems
	}
	return policy.CompileFiles(files, c.Allowlist, policyOptions(c))
}
