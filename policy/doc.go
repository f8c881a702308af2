// Package policy decides whether a function may reach a host.
//
// It parses plain-text allowlist files (one rule per line: "api.example.com",
// "*.example.com", "host:8443", "10.20.0.0/16"), compiles them into an immutable
// Matcher, and answers each lookup with a Decision that says which rule allowed the
// target or, for a denial, why and what to add. A Matcher is never changed after
// Compile returns it: a reload compiles a new one, and callers swap it in atomically,
// so lookups take no lock.
//
// The package moves no bytes and resolves no names; the proxy does that.
package policy
