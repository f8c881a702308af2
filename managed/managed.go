// Package managed keeps the allowlist rules that operators add and remove through
// the admin API (and the console), beside the rules of the allowlist files, which
// belong to a ConfigMap and stay read-only through the API. A rule is validated
// exactly as a file rule is, by policy.ParseRule.
//
// A Store keeps them durably: File in a plain-text file of its own (one rule a line,
// written as the secret store is written), and, in cluster mode, etcd. The reloader
// reads them with Text and compiles them with the files' rules.
package managed

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/egressd/egressd/internal/atomicfile"
	"github.com/egressd/egressd/policy"
)

// Errors the API maps to status codes.
var (
	ErrInvalid  = errors.New("invalid rule")
	ErrExists   = errors.New("the rule is already managed")
	ErrNotFound = errors.New("no such managed rule")
	// ErrUnavailable is a change that could not be made durable: it was not made.
	ErrUnavailable = errors.New("the managed allowlist could not be saved; nothing was changed")
	// ErrUnconfirmed is a change sent to etcd that etcd did not confirm: it was not
	// acknowledged, and may yet be applied (a write that reached a leader cut off
	// from its quorum is committed once the quorum is back).
	ErrUnconfirmed = errors.New("etcd did not confirm the change (is a quorum of members up?); it was not acknowledged and may still be applied once etcd recovers: check with 'egressd allowlist list' before retrying")
)

// Store is where managed rules live.
type Store interface {
	// List returns the rules, in the order they were added.
	List() ([]string, error)
	// Add adds a rule (validated), durably, before it returns.
	Add(rule string) error
	// Remove removes a rule, durably, before it returns.
	Remove(rule string) error
}

// Validate checks a rule as an allowlist file's line is checked, and returns its
// text as stored (without surrounding space).
func Validate(rule string) (string, error) {
	text := strings.TrimSpace(rule)
	if strings.ContainsAny(text, "\n\r#") {
		return "", fmt.Errorf("%w: %q: one rule, with no comment or line break", ErrInvalid, rule)
	}
	if _, err := policy.ParseRule(text); err != nil {
		return "", fmt.Errorf("%w: %q: %v", ErrInvalid, text, err)
	}
	return text, nil
}

// Text is the rules as an allowlist file's content.
func Text(rules []string) []byte {
	if len(rules) == 0 {
		return nil
	}
	return []byte(strings.Join(rules, "\n") + "\n")
}

// File keeps the rules in a plain-text file, one a line. Every change is written
// durably (temporary file, fsync, rename, fsync of the directory) before Add or
// Remove returns; a change that cannot be written is not made.
type File struct {
	path string
	mu   sync.Mutex
}

// NewFile returns the store in path; a missing file is an empty store.
func NewFile(path string) *File { return &File{path: path} }

// Path is the file's path, for the watcher.
func (f *File) Path() string { return f.path }

func (f *File) List() ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.read()
}

func (f *File) read() ([]string, error) {
	data, err := os.ReadFile(f.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("managed allowlist %s: %w", f.path, err)
	}
	var rules []string
	for _, line := range strings.Split(string(data), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			rules = append(rules, line)
		}
	}
	return rules, nil
}

func (f *File) Add(rule string) error {
	text, err := Validate(rule)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	rules, err := f.read()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if slices.Contains(rules, text) {
		return fmt.Errorf("%w: %s", ErrExists, text)
	}
	return f.write(append(rules, text))
}

func (f *File) Remove(rule string) error {
	text := strings.TrimSpace(rule)
	f.mu.Lock()
	defer f.mu.Unlock()
	rules, err := f.read()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	i := slices.Index(rules, text)
	if i < 0 {
		return fmt.Errorf("%w: %s", ErrNotFound, text)
	}
	return f.write(slices.Delete(rules, i, i+1))
}

func (f *File) write(rules []string) error {
	data := append([]byte("# Managed through egressd's admin API (egressd allowlist add|remove); edits by hand are read too.\n"), Text(rules)...)
	if err := atomicfile.Write(f.path, data); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return nil
}
