package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestHotReload makes one edit in each way a file can change and checks that the
// proxy follows it within one second of the write.
func TestHotReload(t *testing.T) {
	t.Parallel()
	origin := httpOrigin(t)
	rule := origin.Listener.Addr().String() + "\n"
	target := "http://" + origin.Listener.Addr().String() + "/"

	tests := []struct {
		name      string
		allowlist []string
		files     map[string]string
		setup     func(t *testing.T, dir string) // before the daemon starts
		edit      func(t *testing.T, dir string)
		want      int // the status after the edit
	}{
		{
			name:  "written in place",
			files: map[string]string{"allow.d/a.txt": "other.invalid\n"},
			edit: func(t *testing.T, dir string) {
				f, err := os.OpenFile(filepath.Join(dir, "allow.d/a.txt"), os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.WriteString(rule)
				f.Close()
			},
			want: 200,
		},
		{
			name:  "editor renames a new file over it",
			files: map[string]string{"allow.d/a.txt": "other.invalid\n"},
			edit: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "allow.d/.a.txt.swp"), "other.invalid\n"+rule)
				rename(t, filepath.Join(dir, "allow.d/.a.txt.swp"), filepath.Join(dir, "allow.d/a.txt"))
			},
			want: 200,
		},
		{
			name:  "deleted and recreated",
			files: map[string]string{"allow.d/a.txt": "other.invalid\n"},
			edit: func(t *testing.T, dir string) {
				os.Remove(filepath.Join(dir, "allow.d/a.txt"))
				writeFile(t, filepath.Join(dir, "allow.d/a.txt"), rule)
			},
			want: 200,
		},
		{
			name:  "file added to the directory",
			files: map[string]string{"allow.d/a.txt": "other.invalid\n"},
			edit:  func(t *testing.T, dir string) { writeFile(t, filepath.Join(dir, "allow.d/b.txt"), rule) },
			want:  200,
		},
		{
			name:  "file removed from the directory",
			files: map[string]string{"allow.d/a.txt": "other.invalid\n", "allow.d/b.txt": rule},
			edit:  func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "allow.d/b.txt")) },
			want:  403,
		},
		{
			name:      "single configured file replaced by rename",
			allowlist: []string{"single.txt"},
			files:     map[string]string{"single.txt": "other.invalid\n"},
			edit: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "single.txt.new"), rule)
				rename(t, filepath.Join(dir, "single.txt.new"), filepath.Join(dir, "single.txt"))
			},
			want: 200,
		},
		{
			name:      "Kubernetes ConfigMap ..data swap",
			allowlist: []string{"cm"},
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "cm/..2026_11_26_00_00_00.1/allow.txt"), "other.invalid\n")
				symlink(t, "..2026_11_26_00_00_00.1", filepath.Join(dir, "cm/..data"))
				symlink(t, "..data/allow.txt", filepath.Join(dir, "cm/allow.txt"))
			},
			edit: func(t *testing.T, dir string) {
				// What the kubelet does: a new timestamped directory, a new link, and an
				// atomic rename of the link over ..data.
				writeFile(t, filepath.Join(dir, "cm/..2026_11_26_00_01_00.2/allow.txt"), rule)
				symlink(t, "..2026_11_26_00_01_00.2", filepath.Join(dir, "cm/..data_tmp"))
				rename(t, filepath.Join(dir, "cm/..data_tmp"), filepath.Join(dir, "cm/..data"))
				os.RemoveAll(filepath.Join(dir, "cm/..2026_11_26_00_00_00.1"))
			},
			want: 200,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := daemonConfig{files: tt.files, allowlist: tt.allowlist}
			if tt.setup != nil {
				// The daemon's directory is made by startDaemon; stage in a directory of
				// our own and point the allowlist at it with an absolute path.
				stage := t.TempDir()
				tt.setup(t, stage)
				for i, p := range cfg.allowlist {
					cfg.allowlist[i] = filepath.Join(stage, p)
				}
				d := startDaemon(t, cfg)
				checkReload(t, d, target, func(t *testing.T) { tt.edit(t, stage) }, tt.want)
				return
			}
			d := startDaemon(t, cfg)
			checkReload(t, d, target, func(t *testing.T) { tt.edit(t, d.dir) }, tt.want)
		})
	}
}

func checkReload(t *testing.T, d *daemon, target string, edit func(*testing.T), want int) {
	t.Helper()
	before := 403
	if want == 403 {
		before = 200
	}
	if got := d.status(target); got != before {
		t.Fatalf("before the edit: %s = %d; want %d", target, got, before)
	}
	edit(t)
	took := d.waitStatus(target, want)
	t.Logf("edit in force after %v", took.Round(time.Millisecond))
	if took > time.Second {
		t.Errorf("edit took %v to be in force; want within 1s", took)
	}
}

func TestBrokenEditKeepsPolicy(t *testing.T) {
	t.Parallel()
	origin := httpOrigin(t)
	target := "http://" + origin.Listener.Addr().String() + "/"
	d := startDaemon(t, daemonConfig{files: map[string]string{"allow.d/a.txt": origin.Listener.Addr().String() + "\n"}})
	if got := d.status(target); got != 200 {
		t.Fatalf("before: %d; want 200", got)
	}
	writeFile(t, d.path("allow.d/a.txt"), "*.*.broken.example\n")
	d.waitLog(`*.*.broken.example`, 5*time.Second)
	if got := d.status(target); got != 200 {
		t.Errorf("after a broken edit: %d; want 200 (the last good policy)", got)
	}
	if line := d.logs.find(`"msg":"allowlist error"`); !strings.Contains(line, `allow.d/a.txt:1: \"*.*.broken.example\": only one wildcard is allowed`) {
		t.Errorf("the error log line does not name file:line and the problem: %s", line)
	}
	if v := d.metric(`egressd_policy_last_reload_success`); v != 0 {
		t.Errorf("egressd_policy_last_reload_success = %v; want 0", v)
	}
	if v := d.metric(`egressd_policy_reloads_total{result="failure"}`); v < 1 {
		t.Errorf(`egressd_policy_reloads_total{result="failure"} = %v; want >= 1`, v)
	}
	if v := d.metric(`egressd_policy_rules`); v != 1 {
		t.Errorf("egressd_policy_rules = %v; want 1, the rules still in force", v)
	}
	// A fix is picked up.
	writeFile(t, d.path("allow.d/a.txt"), "other.invalid\n")
	d.waitStatus(target, 403)
	if v := d.metric(`egressd_policy_last_reload_success`); v != 1 {
		t.Errorf("after the fix egressd_policy_last_reload_success = %v; want 1", v)
	}
}

// TestSIGHUP edits a file the watcher cannot see (the target of a symbolic link that
// lives outside the watched directories); SIGHUP makes egressd read it.
func TestSIGHUP(t *testing.T) {
	t.Parallel()
	origin := httpOrigin(t)
	target := "http://" + origin.Listener.Addr().String() + "/"
	outside, watched := t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(outside, "real.txt"), "other.invalid\n")
	symlink(t, filepath.Join(outside, "real.txt"), filepath.Join(watched, "link.txt"))
	d := startDaemon(t, daemonConfig{allowlist: []string{filepath.Join(watched, "link.txt")}})
	loads := d.logs.count(`"msg":"policy loaded"`)

	writeFile(t, filepath.Join(outside, "real.txt"), origin.Listener.Addr().String()+"\n")
	time.Sleep(400 * time.Millisecond) // longer than the debounce: the watcher did not see it
	if got := d.logs.count(`"msg":"policy loaded"`); got != loads {
		t.Fatalf("the watcher reloaded on an edit it cannot see; the test's premise is broken")
	}
	if got := d.status(target); got != 403 {
		t.Fatalf("before SIGHUP: %d; want 403", got)
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitStatus(target, 200)
	d.waitLog(`"signal":"SIGHUP"`, time.Second)
}

func TestRevokedTunnelIsClosed(t *testing.T) {
	t.Parallel()
	echo := echoOrigin(t)
	d := startDaemon(t, daemonConfig{files: map[string]string{"allow.d/a.txt": echo + "\n"}})
	c := openTunnel(t, d.proxy, echo)
	defer c.Close()
	if err := roundTrip(c, "before"); err != nil {
		t.Fatalf("tunnel before the reload: %v", err)
	}
	writeFile(t, d.path("allow.d/a.txt"), "other.invalid\n")
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if n, err := c.Read(make([]byte, 16)); err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("tunnel still open after its rule was removed: read %d, %v", n, err)
	}
	line := d.waitLog(`"closed":"revoked"`, 2*time.Second)
	if !strings.Contains(line, `"target":"`+echo+`"`) {
		t.Errorf("access log line for the revoked tunnel: %s", line)
	}
}

func TestIdleTunnelIsClosed(t *testing.T) {
	t.Parallel()
	echo := echoOrigin(t)
	d := startDaemon(t, daemonConfig{
		proxy: "  idle_timeout: 400ms\n",
		files: map[string]string{"allow.d/a.txt": echo + "\n"},
	})
	busy := openTunnel(t, d.proxy, echo)
	defer busy.Close()
	idle := openTunnel(t, d.proxy, echo)
	defer idle.Close()
	// Keep one tunnel busy past the idle timeout; the other says nothing.
	for i := 0; i < 8; i++ {
		if err := roundTrip(busy, "tick"); err != nil {
			t.Fatalf("busy tunnel closed after %d round trips: %v", i, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	idle.SetReadDeadline(time.Now().Add(3 * time.Second))
	if n, err := idle.Read(make([]byte, 1)); err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("idle tunnel still open: read %d, %v", n, err)
	}
	if err := roundTrip(busy, "still here"); err != nil {
		t.Errorf("busy tunnel was closed: %v", err)
	}
	d.waitLog(`"closed":"idle"`, 2*time.Second)
}

func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	echo := echoOrigin(t)
	t.Run("tunnel finishes", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t, daemonConfig{proxy: "  drain_timeout: 20s\n", files: map[string]string{"allow.d/a.txt": echo + "\n"}})
		c := openTunnel(t, d.proxy, echo)
		d.cmd.Process.Signal(syscall.SIGTERM)
		d.waitLog(`"msg":"shutting down"`, 5*time.Second)
		if err := roundTrip(c, "during drain"); err != nil {
			t.Errorf("tunnel broken during the drain: %v", err)
		}
		if _, err := openTunnelErr(d.proxy, echo); err == nil {
			t.Errorf("a new tunnel was accepted after SIGTERM")
		}
		c.Close()
		select {
		case <-d.done:
			if d.exitErr != nil {
				t.Errorf("egressd exited with %v; want 0", d.exitErr)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("egressd did not exit after its last tunnel closed")
		}
	})
	t.Run("drain time runs out", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t, daemonConfig{proxy: "  drain_timeout: 300ms\n", files: map[string]string{"allow.d/a.txt": echo + "\n"}})
		c := openTunnel(t, d.proxy, echo)
		defer c.Close()
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
			if d.exitErr != nil {
				t.Errorf("egressd exited with %v; want 0", d.exitErr)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("egressd did not exit after the drain time")
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || strings.Contains(err.Error(), "timeout") {
			t.Errorf("tunnel still open after egressd exited: %v", err)
		}
		if !strings.Contains(d.logs.String(), `"closed":"shutdown"`) {
			t.Errorf("no access log line with closed=shutdown")
		}
	})
}

func openTunnelErr(proxy, target string) (string, error) {
	c, err := dialTimeout(proxy)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n\r\n")); err != nil {
		return "", err
	}
	buf := make([]byte, 12)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func rename(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// TestSlowInPlaceRewriteUnderTraffic: an allowlist regenerated in place by a slow
// program (truncate, 0.3s, write) while requests flow: a host in both the old and the
// new version is never denied.
func TestSlowInPlaceRewriteUnderTraffic(t *testing.T) {
	t.Parallel()
	origin := httpOrigin(t)
	keep := origin.Listener.Addr().String()
	d := startDaemon(t, daemonConfig{files: map[string]string{"allow.d/a.txt": keep + "\nold.invalid\n"}})
	file := filepath.Join(d.dir, "allow.d/a.txt")

	stop := make(chan struct{})
	counts := make(chan [2]int, 1)
	go func() {
		c := d.client()
		var ok, denied int
		for i := 0; i < 5000; i++ { // bounded; stopped by the writer
			select {
			case <-stop:
				counts <- [2]int{ok, denied}
				return
			default:
			}
			resp, err := c.Get("http://" + keep + "/")
			if err != nil {
				continue
			}
			resp.Body.Close()
			if resp.StatusCode == 403 {
				denied++
			} else {
				ok++
			}
		}
		counts <- [2]int{ok, denied}
	}()
	for i := 0; i < 3; i++ {
		f, err := os.OpenFile(file, os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		f.WriteString(keep + "\nnew" + string(rune('a'+i)) + ".invalid\n")
		f.Close()
		time.Sleep(400 * time.Millisecond)
	}
	close(stop)
	got := <-counts
	if got[1] != 0 || got[0] == 0 {
		t.Errorf("%d requests allowed, %d denied during the rewrites; want none denied", got[0], got[1])
	}
	t.Logf("%d requests during the rewrites, none denied", got[0])
}
