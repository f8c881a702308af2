package reload

import (
	"os"
	"testing"

	"github.com/egressd/egressd/policy"
)

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
