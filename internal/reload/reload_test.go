package reload

import (
	"os"
	"testing"

	"github.com/egressd/egressd/policy"
)

func TestRelevantEvents(t *testing.T) {
	tg := newTargets([]string{"/etc/egressd/allow.d", "/etc/egressd/extra.txt"})
	tests := []struct {
		name string
		want bool
	}{
		{"/etc/egressd/allow.d/a.txt", true},      // a file in a configured directory
		{"/etc/egressd/allow.d/..data", true},     // a ConfigMap swap inside it
		{"/etc/egressd/allow.d/.a.txt.swp", true}, // an editor's temporary file, then renamed
		{"/etc/egressd/extra.txt", true},          // a configured file
		{"/etc/egressd/allow.d", true},            // the directory itself, recreated
		{"/etc/egressd/..data", true},             // a ConfigMap mounted one level up
		{"/etc/egressd/egressd.yaml", false},      // a neighbour of a configured file
		{"/etc/egressd/other.txt", false},         // likewise
		{"/etc/passwd", false},                    // elsewhere
	}
	for _, tt := range tests {
		if got := tg.relevant(tt.name); got != tt.want {
			t.Errorf("relevant(%s) = %v; want %v", tt.name, got, tt.want)
		}
	}
}

func TestFailedLoadKeepsPolicy(t *testing.T) {
	dir := t.TempDir()
	file := dir + "/a.txt"
	write := func(s string) {
		t.Helper()
		if err := writeFileHelper(file, s); err != nil {
			t.Fatal(err)
		}
	}
	var applied []*policy.Matcher
	r, err := New(Options{FS: policy.OSFiles{}, Paths: []string{file}, Apply: func(m *policy.Matcher) { applied = append(applied, m) }})
	if err != nil {
		t.Fatal(err)
	}
	write("api.example.com\n")
	if err := r.Load(); err != nil {
		t.Fatal(err)
	}
	write("*\n")
	if err := r.Load(); err == nil {
		t.Fatal("Load of a broken file succeeded")
	}
	if len(applied) != 1 {
		t.Fatalf("Apply called %d times; want once, for the good load only", len(applied))
	}
	st := r.Status()
	if st.OK || st.Rules != 1 || len(st.Errors) != 1 {
		t.Errorf("Status after a failed load = %+v; want not OK, 1 rule in force, 1 error", st)
	}
}

func writeFileHelper(path, s string) error { return os.WriteFile(path, []byte(s), 0o644) }
