package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// invocation is what a function server received.
type invocation struct {
	at                    time.Time
	body, id, scheduledAt string
}

func functionServer(t *testing.T) (*httptest.Server, func() []invocation) {
	t.Helper()
	var mu sync.Mutex
	var got []invocation
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, invocation{time.Now(), string(b), r.Header.Get("X-Egressd-Schedule-Id"), r.Header.Get("X-Egressd-Scheduled-Time")})
		mu.Unlock()
		w.WriteHeader(204)
	}))
	t.Cleanup(srv.Close)
	return srv, func() []invocation {
		mu.Lock()
		defer mu.Unlock()
		return append([]invocation(nil), got...)
	}
}

func schedulerDaemon(t *testing.T, dir, fnURL string) (*daemon, string, []string) {
	t.Helper()
	writeFile(t, filepath.Join(dir, "functions.yaml"), fmt.Sprintf(
		"functions:\n  - name: refresh-token\n    url: %s/\n    state: productive\n  - name: wip\n    url: %s/\n    state: draft\n", fnURL, fnURL))
	writeFile(t, filepath.Join(dir, "admin.token"), "sched-token\n")
	d := startDaemon(t, daemonConfig{extra: fmt.Sprintf(
		"admin:\n  listen: 127.0.0.1:0\n  token_file: %s\nscheduler:\n  functions_file: %s\n  state_file: %s\n",
		filepath.Join(dir, "admin.token"), filepath.Join(dir, "functions.yaml"), filepath.Join(dir, "schedules.json"))})
	return d, "http://" + d.admin, []string{"EGRESSD_ADMIN_TOKEN=sched-token"}
}

func TestSchedulesCLI(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fn, calls := functionServer(t)
	d, admin, env := schedulerDaemon(t, dir, fn.URL)
	sched := func(args ...string) execResult {
		t.Helper()
		return execInEnv(t, dir, env, nil, append([]string{"schedules"}, append(args, "--admin", admin)...)...)
	}

	refusals := []struct {
		args []string
		want string
	}{
		{[]string{"create", "--function", "refresh-token", "--cron", "CRON_TZ=Europe/Berlin 0 6 * * *"}, "schedules always run in UTC"},
		{[]string{"create", "--function", "refresh-token", "--cron", "0 0 6 * * *"}, "a seconds field is not supported"},
		{[]string{"create", "--function", "refresh-token", "--cron", "@every 30s"}, "more often than once a minute"},
		{[]string{"create", "--function", "refresh-token", "--cron", "0 0 30 2 *"}, "it never fires"},
		{[]string{"create", "--function", "wip", "--cron", "@hourly"}, `function "wip" is draft`},
		{[]string{"create", "--function", "gone", "--cron", "@hourly"}, `no function "gone"`},
		{[]string{"create", "--function", "refresh-token", "--cron", "@hourly", "--payload", "{not json"}, "not valid JSON"},
		{[]string{"create", "--function", "refresh-token", "--cron", "@hourly", "--payload", `{"t":"` + strings.Repeat("ü", 7993) + `"}`}, "the payload is 8001 characters"},
	}
	for _, r := range refusals {
		res := sched(r.args...)
		if res.code != 1 || !strings.Contains(res.stderr, r.want) {
			t.Errorf("schedules %v = exit %d, %q; want 1 and %q", r.args[:5], res.code, res.stderr, r.want)
		}
	}

	writeFile(t, filepath.Join(dir, "payload.json"), `{"scope":"read write"}`)
	res := sched("create", "--function", "refresh-token", "--cron", "*/50 * * * *", "--payload", "@"+filepath.Join(dir, "payload.json"))
	if res.code != 0 || !strings.HasPrefix(res.stdout, "created ") {
		t.Fatalf("create = exit %d, %q %q", res.code, res.stdout, res.stderr)
	}
	id := strings.TrimSuffix(strings.Fields(res.stdout)[1], ":")

	res = sched("run", id)
	if res.code != 0 || !strings.Contains(res.stdout, "success (204") {
		t.Errorf("run = exit %d, %q %q", res.code, res.stdout, res.stderr)
	}
	if got := calls(); len(got) != 1 || got[0].body != `{"scope":"read write"}` || got[0].id != id {
		t.Errorf("the function received %+v", got)
	} else if _, err := time.Parse(time.RFC3339, got[0].scheduledAt); err != nil || !strings.HasSuffix(got[0].scheduledAt, "Z") {
		t.Errorf("X-Egressd-Scheduled-Time = %q; want RFC 3339 UTC", got[0].scheduledAt)
	}
	res = sched("list")
	if res.code != 0 || !strings.Contains(res.stdout, id) || !strings.Contains(res.stdout, "UTC") || !strings.Contains(res.stdout, "success (204") {
		t.Errorf("list = exit %d:\n%s", res.code, res.stdout)
	}
	if v := d.metric(`egressd_schedule_invocations_total{function="refresh-token",result="success"}`); v != 1 {
		t.Errorf("invocations metric = %v; want 1", v)
	}

	// A restart keeps the schedule.
	d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.done
	d2, admin2, _ := schedulerDaemon(t, dir, fn.URL)
	res = execInEnv(t, dir, env, nil, "schedules", "list", "--json", "--admin", admin2)
	if res.code != 0 || !strings.Contains(res.stdout, id) || !strings.Contains(res.stdout, `"last_outcome": "success"`) {
		t.Errorf("after a restart list = exit %d:\n%s", res.code, res.stdout)
	}

	// Undeploying the function deletes its schedule, and says what it was.
	writeFile(t, filepath.Join(dir, "functions.yaml"), "functions:\n  - name: refresh-token\n    url: "+fn.URL+"/\n    state: draft\n")
	line := d2.waitLog(`its function is undeployed`, 3*time.Second)
	if !strings.Contains(line, `"cron":"*/50 * * * *"`) || !strings.Contains(line, `"id":"`+id+`"`) {
		t.Errorf("deletion log line: %s", line)
	}
	res = execInEnv(t, dir, env, nil, "schedules", "list", "--admin", admin2)
	if !strings.Contains(res.stdout, "no schedules") {
		t.Errorf("after undeploy list = %q", res.stdout)
	}
}

// TestShutdownDuringARun: SIGTERM while a scheduled run is going stops accepting at
// once, and egressd is gone within the drain time, the run canceled.
func TestShutdownDuringARun(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	called := make(chan struct{}, 1)
	release := make(chan struct{})
	fn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		called <- struct{}{}
		select { // a function that takes its time
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); fn.Close() })
	writeFile(t, filepath.Join(dir, "functions.yaml"), "functions:\n  - name: slow\n    url: "+fn.URL+"/\n    state: productive\n")
	writeFile(t, filepath.Join(dir, "admin.token"), "sched-token\n")
	d := startDaemon(t, daemonConfig{
		proxy: "  drain_timeout: 2s\n",
		extra: fmt.Sprintf("admin:\n  listen: 127.0.0.1:0\n  token_file: %s\nscheduler:\n  functions_file: %s\n  state_file: %s\n  invoke_timeout: 60s\n",
			filepath.Join(dir, "admin.token"), filepath.Join(dir, "functions.yaml"), filepath.Join(dir, "schedules.json"))})
	env := []string{"EGRESSD_ADMIN_TOKEN=sched-token"}
	res := execInEnv(t, dir, env, nil, "schedules", "create", "--function", "slow", "--cron", "@hourly", "--admin", "http://"+d.admin)
	id := strings.Fields(res.stdout)[1]
	id = strings.TrimSuffix(id, ":")
	go func() { // the run, through the admin API; it waits for the function
		req, _ := http.NewRequest("POST", "http://"+d.admin+"/v1/schedules/"+id+"/run", nil)
		req.Header.Set("Authorization", "Bearer sched-token")
		if resp, err := (&http.Client{Timeout: 15 * time.Second}).Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	select {
	case <-called:
	case <-time.After(10 * time.Second):
		t.Fatal("the run never reached the function")
	}
	start := time.Now()
	d.cmd.Process.Signal(syscall.SIGTERM)
	refused := false
	for i := 0; i < 50 && !refused; i++ { // the proxy stops accepting at once
		c, err := dialTimeout(d.proxy)
		if err != nil {
			refused = true
			break
		}
		c.Close()
		time.Sleep(10 * time.Millisecond)
	}
	if !refused || time.Since(start) > 500*time.Millisecond {
		t.Errorf("the proxy still accepted %v after SIGTERM", time.Since(start))
	}
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		t.Fatal("egressd still running 10s after SIGTERM")
	}
	if took := time.Since(start); took > 3500*time.Millisecond {
		t.Errorf("egressd took %v to stop; want the drain time (2s) at most", took)
	}
}
