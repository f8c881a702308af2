package policy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// Problem is an error or a warning about one allowlist line (or, with Line zero, one
// file). Its Error text is what an operator reads: `file:line: "rule": what to do`.
type Problem struct {
	File string
	Line int // zero for a problem with the file as a whole
	Rule string
	Msg  string
}

func (p Problem) Error() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		b.WriteString(":" + strconv.Itoa(p.Line))
	}
	b.WriteString(": ")
	if p.Rule != "" {
		b.WriteString(strconv.Quote(p.Rule) + ": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Problems is every error found in one load, in file and line order.
type Problems []Problem

func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.Error()
	}
	return strings.Join(lines, "\n")
}

// maxLineBytes bounds one allowlist line; a longer line is an error, not a truncation.
// Lines up to maxScanBytes are read and reported one by one; past that the scanner
// stops, and the rest of the file is reported as unread.
const (
	maxLineBytes = 4096
	maxScanBytes = 1 << 20
)

// ParseFile parses one allowlist file. name is used in rules and problems. It returns
// every rule it could parse and every problem it found, so that an operator sees all
// mistakes in one pass.
func ParseFile(name string, r io.Reader) ([]Rule, Problems) {
	var (
		rules    []Rule
		problems Problems
	)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxScanBytes)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Bytes()
		if len(text) > maxLineBytes {
			problems = append(problems, Problem{File: name, Line: line,
				Msg: fmt.Sprintf("line of %d bytes, longer than %d; one rule per line", len(text), maxLineBytes)})
			continue
		}
		if i := bytes.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		text = bytes.TrimSpace(text)
		if len(text) == 0 {
			continue
		}
		rule, err := ParseRule(string(text))
		if err != nil {
			problems = append(problems, Problem{File: name, Line: line, Rule: rule.Text, Msg: err.Error()})
			continue
		}
		rule.File, rule.Line = name, line
		rules = append(rules, rule)
	}
	if err := sc.Err(); err != nil {
		msg := err.Error()
		if errors.Is(err, bufio.ErrTooLong) {
			msg = fmt.Sprintf("line longer than %d bytes (over %d: the rest of the file is not read); one rule per line", maxLineBytes, maxScanBytes)
		}
		problems = append(problems, Problem{File: name, Line: line + 1, Msg: msg})
	}
	return rules, problems
}

// Result describes a successful Load.
type Result struct {
	Matcher  *Matcher
	Files    []string // the allowlist files read, in order
	Warnings Problems // duplicates and other things worth fixing that do not stop a load
}

// File is one allowlist file as read.
type File struct {
	Name string
	Data []byte
}

// Load reads the allowlist paths from fsys (ReadFiles) and compiles them (Compile
// Files). On any error it returns Problems with every error of every file, and no
// Matcher.
func Load(fsys fs.FS, paths []string, opts Options) (Result, error) {
	files, problems := ReadFiles(fsys, paths)
	if len(problems) > 0 {
		// Parse what was read too, so that one pass shows every error.
		for _, f := range files {
			_, ps := ParseFile(f.Name, bytes.NewReader(f.Data))
			problems = append(problems, ps...)
		}
		return Result{}, problems
	}
	return CompileFiles(files, paths, opts)
}

// ReadFiles reads the allowlist paths from fsys. A path that is a directory
// contributes every entry in it whose name does not start with '.', in name order, so
// Kubernetes' "..data" entries are skipped and a ConfigMap mounted as a directory reads
// as its files (symbolic links to regular files). An entry that cannot be read as a
// regular file (a dangling symbolic link, a loop, a directory, a device) is a problem:
// its rules would otherwise be dropped without a word.
func ReadFiles(fsys fs.FS, paths []string) ([]File, Problems) {
	var (
		files    []File
		problems Problems
	)
	for _, p := range paths {
		names, ps := expand(fsys, p)
		problems = append(problems, ps...)
		for _, name := range names {
			data, err := fs.ReadFile(fsys, name)
			if err != nil {
				problems = append(problems, Problem{File: name, Msg: describeFileError(err)})
				continue
			}
			files = append(files, File{Name: name, Data: data})
		}
	}
	return files, problems
}

// CompileFiles parses files and compiles their rules; paths name the allowlist in a
// warning about an empty one.
func CompileFiles(files []File, paths []string, opts Options) (Result, error) {
	var (
		res      Result
		rules    []Rule
		problems Problems
	)
	for _, f := range files {
		res.Files = append(res.Files, f.Name)
		rs, ps := ParseFile(f.Name, bytes.NewReader(f.Data))
		rules = append(rules, rs...)
		problems = append(problems, ps...)
	}
	if len(problems) > 0 {
		return Result{}, problems
	}
	res.Matcher, res.Warnings = Compile(rules, opts)
	if len(rules) == 0 {
		res.Warnings = append(res.Warnings, Problem{File: strings.Join(paths, ", "),
			Msg: "no rules: every request will be denied; add hosts, one per line"})
	}
	return res, nil
}

// expand returns the allowlist files a configured path stands for, and a problem for
// every entry of a directory that is not a readable regular file.
func expand(fsys fs.FS, p string) ([]string, Problems) {
	info, err := fs.Stat(fsys, p)
	if err != nil {
		return nil, Problems{{File: p, Msg: describeFileError(err)}}
	}
	if !info.IsDir() {
		if !info.Mode().IsRegular() {
			return nil, Problems{{File: p, Msg: "not a regular file or directory"}}
		}
		return []string{p}, nil
	}
	entries, err := fs.ReadDir(fsys, p)
	if err != nil {
		return nil, Problems{{File: p, Msg: describeFileError(err)}}
	}
	var (
		files    []string
		problems Problems
	)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		name := joinPath(fsys, p, e.Name())
		// Stat, not e.Type: a ConfigMap's files are symbolic links to regular files.
		fi, err := fs.Stat(fsys, name)
		switch {
		case err != nil:
			problems = append(problems, Problem{File: name, Msg: entryError(err, e)})
		case fi.IsDir():
			problems = append(problems, Problem{File: name, Msg: "a directory inside an allowlist directory, which is not read; move its files up, or rename it to start with '.'"})
		case !fi.Mode().IsRegular():
			problems = append(problems, Problem{File: name, Msg: "not a regular file; an allowlist directory holds allowlist files only (names starting with '.' are skipped)"})
		default:
			files = append(files, name)
		}
	}
	return files, problems
}

// entryError says why a directory entry cannot be read.
func entryError(err error, e fs.DirEntry) string {
	if e.Type()&fs.ModeSymlink != 0 {
		if errors.Is(err, fs.ErrNotExist) {
			return "a symbolic link to nothing (dangling); fix or remove it"
		}
		return "a symbolic link that cannot be followed (" + describeFileError(err) + "); fix or remove it"
	}
	return describeFileError(err)
}

func joinPath(fsys fs.FS, dir, name string) string {
	if _, ok := fsys.(OSFiles); ok {
		return filepath.Join(dir, name)
	}
	return path.Join(dir, name)
}

func describeFileError(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "no such file or directory; check the allowlist paths in the config"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied; egressd must be able to read it"
	}
	return err.Error()
}

// OSFiles reads the operating system's files by their OS paths, absolute or relative to
// the working directory. Allowlist paths from a config file are such paths, which
// os.DirFS cannot take (it needs a root and unrooted slash-separated names).
type OSFiles struct{}

func (OSFiles) Open(name string) (fs.File, error)          { return os.Open(name) }
func (OSFiles) ReadFile(name string) ([]byte, error)       { return os.ReadFile(name) }
func (OSFiles) ReadDir(name string) ([]fs.DirEntry, error) { return os.ReadDir(name) }
func (OSFiles) Stat(name string) (fs.FileInfo, error)      { return os.Stat(name) }

// FS is what allowlists are read from: OSFiles for the operating system's files, or
// an embed.FS for the defaults built into the binary.
type FS = fs.FS
