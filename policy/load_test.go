package policy

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestLoadBrokenDirectoryEntries: an entry of an allowlist directory that cannot be
// read as a regular file fails the load; its rules are never dropped quietly.
func TestLoadBrokenDirectoryEntries(t *testing.T) {
	tests := []struct {
		name string
		make func(t *testing.T, dir string)
		want string
	}{
		{"dangling symlink", func(t *testing.T, dir string) { os.Symlink(dir+"/gone.txt", dir+"/b.txt") },
			"b.txt: a symbolic link to nothing (dangling); fix or remove it"},
		{"symlink loop", func(t *testing.T, dir string) { os.Symlink(dir+"/b.txt", dir+"/b.txt") },
			"b.txt: a symbolic link that cannot be followed ("},
		{"directory", func(t *testing.T, dir string) { os.Mkdir(dir+"/b.txt", 0o755) },
			"b.txt: a directory inside an allowlist directory, which is not read"},
		{"fifo", func(t *testing.T, dir string) { syscall.Mkfifo(dir+"/b.txt", 0o644) },
			"b.txt: not a regular file;"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(dir+"/a.txt", []byte("a.example.com\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			tt.make(t, dir)
			_, err := Load(OSFiles{}, []string{dir}, Options{})
			if err == nil || !strings.Contains(err.Error(), dir+"/"+tt.want) {
				t.Errorf("Load = %v; want an error with %q", err, tt.want)
			}
		})
	}
}

func TestLineLimit(t *testing.T) {
	ok := "# " + strings.Repeat("c", maxLineBytes-2) + "\nok.example.com\n"
	if rules, ps := ParseFile("a.txt", strings.NewReader(ok)); len(ps) != 0 || len(rules) != 1 {
		t.Errorf("a line of exactly %d bytes: %v", maxLineBytes, ps)
	}
	for _, n := range []int{maxLineBytes + 1, 70000} {
		text := "ok.example.com\n# " + strings.Repeat("c", n-2) + "\nnext.example.com\n"
		rules, ps := ParseFile("a.txt", strings.NewReader(text))
		want := "a.txt:2: line of " + strconv.Itoa(n) + " bytes, longer than 4096; one rule per line"
		if len(ps) != 1 || ps[0].Error() != want || len(rules) != 2 {
			t.Errorf("a line of %d bytes: %v, %d rules; want %q and the other two rules", n, ps, len(rules), want)
		}
	}
}
