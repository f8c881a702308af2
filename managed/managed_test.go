package managed

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestFileStore(t *testing.T) {
	dir := t.TempDir()
	f := NewFile(filepath.Join(dir, "managed.txt"))
	if rules, err := f.List(); err != nil || len(rules) != 0 {
		t.Fatalf("a missing file: %v, %v; want an empty store", rules, err)
	}
	for _, r := range []string{"api.example.com", " *.example.org ", "10.20.0.0/16:5432"} {
		if err := f.Add(r); err != nil {
			t.Fatalf("Add(%q): %v", r, err)
		}
	}
	if err := f.Add("api.example.com"); !errors.Is(err, ErrExists) {
		t.Errorf("adding twice: %v", err)
	}
	for _, bad := range []string{"*", "https://example.com/x", "a.com\nb.com", "a.com # note", "*.com"} {
		if err := f.Add(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("Add(%q) = %v; want ErrInvalid", bad, err)
		}
	}
	if err := f.Remove("nope.example.com"); !errors.Is(err, ErrNotFound) {
		t.Errorf("removing what is not there: %v", err)
	}
	if err := f.Remove("*.example.org"); err != nil {
		t.Fatal(err)
	}
	rules, _ := NewFile(f.Path()).List() // as another process reads it
	if len(rules) != 2 || rules[0] != "api.example.com" || rules[1] != "10.20.0.0/16:5432" {
		t.Errorf("rules = %q", rules)
	}
	// A change that cannot be written is not made.
	os.RemoveAll(dir)
	if err := f.Add("new.example.com"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Add with the directory gone: %v; want ErrUnavailable", err)
	}
}
