package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// readmeBlock is one console example of the README: the setup its marker names,
// and its commands with the output each shows.
type readmeBlock struct {
	line  int
	setup string
	cmds  []readmeCmd
}

type readmeCmd struct {
	line int
	cmd  string
	want []string
}

var markerRE = regexp.MustCompile(`^<!-- readme-test: ([a-z-]+)`)

// parseReadme reads every ```console block of the README. Each must follow a
// "<!-- readme-test: SETUP ... -->" line that says what it needs.
func parseReadme(t *testing.T) []readmeBlock {
	t.Helper()
	f, err := os.Open("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []readmeBlock
	var cur *readmeBlock
	setup := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur == nil && line == "```console":
			if setup == "" {
				t.Errorf("README.md:%d: a console example without a <!-- readme-test: SETUP --> line before it", n)
			}
			blocks = append(blocks, readmeBlock{line: n, setup: setup})
			cur = &blocks[len(blocks)-1]
		case cur == nil:
			if m := markerRE.FindStringSubmatch(line); m != nil {
				setup = m[1]
			} else if strings.TrimSpace(line) != "" {
				setup = ""
			}
		case line == "```":
			cur, setup = nil, ""
		case strings.HasPrefix(line, "$ "):
			cur.cmds = append(cur.cmds, readmeCmd{line: n, cmd: strings.TrimPrefix(line, "$ ")})
		case len(cur.cmds) > 0:
			c := &cur.cmds[len(cur.cmds)-1]
			c.want = append(c.want, line)
		}
	}
	return blocks
}

// TestREADMEExamples runs every console example of the README as shown, each in the
// setup its marker names, and compares the output line by line ("..." in a shown
// line stands for any text: key ids, times). Everything runs on loopback: the
// examples that need an egressd get one here, with a config whose names never
// reach a DNS server beyond the machine.
func TestREADMEExamples(t *testing.T) {
	blocks := parseReadme(t)
	if len(blocks) < 5 {
		t.Fatalf("found %d console examples in the README; want at least 5", len(blocks))
	}
	for _, b := range blocks {
		t.Run(fmt.Sprintf("line_%d_%s", b.line, b.setup), func(t *testing.T) {
			dir, env := readmeSetup(t, b.setup)
			for _, c := range b.cmds {
				got := runShown(t, dir, env, c.cmd)
				if msg := matchShown(got, c.want); msg != "" {
					t.Errorf("README.md:%d: $ %s\n%s\ngot:\n%s", c.line, c.cmd, msg, got)
				}
			}
		})
	}
}

// runShown runs one command line with bash, egressd on the PATH, and returns stdout.
func runShown(t *testing.T, dir string, env []string, cmd string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, "bash", "-c", cmd)
	c.Dir = dir
	c.Env = append(cleanEnv(), "PATH="+filepath.Dir(binary)+":"+os.Getenv("PATH"))
	c.Env = append(c.Env, env...)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	if err := c.Run(); err != nil && ctx.Err() != nil {
		t.Fatalf("$ %s: timed out; stderr: %s", cmd, errb.String())
	}
	return out.String()
}

// cleanEnv is the test's environment without proxy variables.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToLower(k) {
		case "http_proxy", "https_proxy", "all_proxy", "no_proxy", "path":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// matchShown compares output with the shown lines; trailing spaces do not count.
func matchShown(got string, want []string) string {
	lines := strings.Split(strings.TrimRight(got, "\n"), "\n")
	if got == "" {
		lines = nil
	}
	if len(lines) != len(want) {
		return fmt.Sprintf("%d lines of output; the README shows %d", len(lines), len(want))
	}
	for i, w := range want {
		parts := strings.Split(strings.TrimRight(w, " "), "...")
		for j := range parts {
			parts[j] = regexp.QuoteMeta(parts[j])
		}
		if !regexp.MustCompile("^" + strings.Join(parts, ".*") + "$").MatchString(strings.TrimRight(lines[i], " ")) {
			return fmt.Sprintf("line %d: %q; the README shows %q", i+1, lines[i], w)
		}
	}
	return ""
}

// readmeSetup prepares what a marker names and returns the directory to run in and
// extra environment.
func readmeSetup(t *testing.T, setup string) (dir string, env []string) {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	switch setup {
	case "builtin":
		return t.TempDir(), nil
	case "quickstart":
		startProcess(t, root, binary, "serve", "--config", "configs/egressd.yaml")
		waitHTTP(t, "http://127.0.0.1:9090/readyz")
		return root, nil
	case "trace":
		bin := filepath.Join(t.TempDir(), "redirects")
		if out, err := exec.Command("go", "build", "-o", bin, "../examples/redirects").CombinedOutput(); err != nil {
			t.Fatalf("building examples/redirects: %v\n%s", err, out)
		}
		startProcess(t, root, bin)
		waitHTTP(t, "http://127.0.0.1:8080/done")
		return root, nil
	case "secrets-file":
		return t.TempDir(), []string{"TOKEN=example-token-value"}
	case "secrets-daemon":
		dir := t.TempDir()
		if _, stderr, code := egressd(t, dir, "secrets", "init", "--file", "secrets.enc", "--key-file", "secrets.key"); code != 0 {
			t.Fatal(stderr)
		}
		if r := execInEnv(t, dir, nil, strings.NewReader("v1"), "secrets", "create", "oauth-token", "--file", "secrets.enc", "--key-file", "secrets.key"); r.code != 0 {
			t.Fatal(r.stderr)
		}
		d := startDaemon(t, daemonConfig{extra: fmt.Sprintf("secrets:\n  file: %s\n  key_file: %s\n",
			filepath.Join(dir, "secrets.enc"), filepath.Join(dir, "secrets.key"))})
		proxy := "http_proxy=http://" + d.proxy
		for _, v := range []string{"v2", "v3"} { // oauth-token to version 3, as a function would
			runShown(t, dir, []string{proxy}, `curl -s -X PUT -d '{"value":"`+v+`"}' http://egressd.internal/v1/secrets/oauth-token`)
		}
		return dir, []string{proxy}
	}
	t.Fatalf("unknown readme-test setup %q", setup)
	return "", nil
}

// startProcess runs a background process until the test ends.
func startProcess(t *testing.T, dir, bin string, args ...string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = cleanEnv()
	var logs logBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("%s log:\n%s", filepath.Base(bin), logs.String())
		}
	})
}

// waitHTTP waits up to 10s for url to answer 200.
func waitHTTP(t *testing.T, url string) {
	t.Helper()
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil}}
	for i := 0; i < 100; i++ {
		if resp, err := c.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s did not answer 200 within 10s", url)
}
