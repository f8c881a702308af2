package reload

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/egressd/egressd/policy"
)

// watched starts a Reloader on dir's allow.txt, loaded with initial, watching until
// the test ends; it returns the file and every policy applied after the first.
func watched(t *testing.T, initial string) (file string, applied func() []*policy.Matcher) {
	t.Helper()
	file = filepath.Join(t.TempDir(), "allow.txt")
	if err := os.WriteFile(file, []byte(initial), 0o644); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []*policy.Matcher
	r, err := New(Options{FS: policy.OSFiles{}, Paths: []string{file}, Apply: func(m *policy.Matcher) {
		mu.Lock()
		got = append(got, m)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Load(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Watch(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	time.Sleep(50 * time.Millisecond) // the watch is set up
	return file, func() []*policy.Matcher {
		mu.Lock()
		defer mu.Unlock()
		return append([]*policy.Matcher(nil), got[1:]...)
	}
}

// slowWrite rewrites file in place the way "gen-allowlist > file" does: truncate,
// then, after a pause, the new content in pieces.
func slowWrite(t *testing.T, file string, pause time.Duration, pieces ...string) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range pieces {
		time.Sleep(pause)
		if _, err := f.WriteString(p); err != nil {
			t.Fatal(err)
		}
	}
}

// waitApplied waits up to 3s for a policy that satisfies ok.
func waitApplied(applied func() []*policy.Matcher, ok func(*policy.Matcher) bool) bool {
	for range 300 {
		if ps := applied(); len(ps) > 0 && ok(ps[len(ps)-1]) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

func allows(m *policy.Matcher, host string) bool { return m.Decide(host, 443).Allow }

// TestInPlaceRewriteNeverAppliedHalfWritten: a file truncated and written again 0.3s
// later is never in force empty, and a host in both versions is never denied.
func TestInPlaceRewriteNeverAppliedHalfWritten(t *testing.T) {
	file, applied := watched(t, "keep.example.com\nold.example.com\n")
	for i := range 3 {
		slowWrite(t, file, 300*time.Millisecond, "keep.example.com\nnew.example.com\n")
		if !waitApplied(applied, func(m *policy.Matcher) bool { return allows(m, "new.example.com") }) {
			t.Fatalf("rewrite %d: the new file was never applied", i)
		}
		os.WriteFile(file, []byte("keep.example.com\nold.example.com\n"), 0o644)
		if !waitApplied(applied, func(m *policy.Matcher) bool { return allows(m, "old.example.com") }) {
			t.Fatalf("rewrite %d: the old file was never applied again", i)
		}
	}
	for i, m := range applied() {
		if !allows(m, "keep.example.com") {
			t.Errorf("policy %d applied during a rewrite denies keep.example.com: a half-written file was applied", i)
		}
	}
}

// TestTornRuleNeverApplied: a rule cut in the middle ("*.example.co" of
// "*.example.com") would allow what nobody listed; it is never in force.
func TestTornRuleNeverApplied(t *testing.T) {
	file, applied := watched(t, "keep.example.com\n")
	slowWrite(t, file, 300*time.Millisecond, "keep.example.com\n*.example.co", "m\n")
	if !waitApplied(applied, func(m *policy.Matcher) bool { return allows(m, "a.example.com") }) {
		t.Fatal("the finished file was never applied")
	}
	for i, m := range applied() {
		if allows(m, "a.example.co") {
			t.Errorf("policy %d allows a.example.co: the torn rule *.example.co was applied", i)
		}
	}
}

// TestEmptiedFileAppliedOnceSettled: emptying a file on purpose takes effect, after
// SuspectSettle.
func TestEmptiedFileAppliedOnceSettled(t *testing.T) {
	file, applied := watched(t, "gone.example.com\n")
	start := time.Now()
	os.WriteFile(file, nil, 0o644)
	if !waitApplied(applied, func(m *policy.Matcher) bool { return !allows(m, "gone.example.com") }) {
		t.Fatal("an emptied file was never applied")
	}
	if took := time.Since(start); took < time.Second {
		t.Errorf("an emptied file was applied after %v; want it held for the suspect settle (1s)", took)
	}
}
