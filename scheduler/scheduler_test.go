package scheduler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

var t0 = time.Date(2026, 11, 26, 10, 0, 30, 0, time.UTC)

func TestParseCron(t *testing.T) {
	ok := []string{"*/5 * * * *", "0 * * * *", "30 6 * * 1-5", "@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually", "@every 1m", "@every 50m"}
	for _, e := range ok {
		if _, err := ParseCron(e, t0); err != nil {
			t.Errorf("ParseCron(%q) = %v; want it accepted", e, err)
		}
	}
	bad := []struct{ expr, want string }{
		{"CRON_TZ=Europe/Berlin 0 6 * * *", "schedules always run in UTC"},
		{"TZ=UTC 0 6 * * *", "schedules always run in UTC"},
		{"0 */5 * * * *", "a seconds field is not supported"},
		{"@every 30s", "fires more often than once a minute"},
		{"@every 59s", "fires more often than once a minute"},
		{"0 0 30 2 *", "it never fires"},
		{"* * *", "3 fields; a cron expression has five"},
		{"61 * * * *", "end of range (61) above maximum (59)"},
		{"@fortnightly", "unrecognized descriptor"},
		{"", "empty"},
	}
	for _, tt := range bad {
		_, err := ParseCron(tt.expr, t0)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), `"*/5 * * * *" (every 5 minutes)`) {
			t.Errorf("ParseCron(%q) = %v; want an error with %q and the examples", tt.expr, err, tt.want)
		}
	}
}

// functionServer is a local function: it records what each invocation carried and
// answers with status (or waits on block first).
type functionServer struct {
	*httptest.Server
	mu     sync.Mutex
	calls  []call
	status atomic.Int32
	block  chan struct{} // if set, each call waits for it
}

type call struct {
	body                     string
	contentType, id, schedAt string
}

func newFunctionServer(t *testing.T) *functionServer {
	f := &functionServer{}
	f.status.Store(200)
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.calls = append(f.calls, call{string(b), r.Header.Get("Content-Type"), r.Header.Get("X-Egressd-Schedule-Id"), r.Header.Get("X-Egressd-Scheduled-Time")})
		block := f.block
		f.mu.Unlock()
		if block != nil {
			<-block
		}
		w.WriteHeader(int(f.status.Load()))
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *functionServer) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

type fixedClock struct{ now time.Time }

func (c *fixedClock) Now() time.Time                                 { return c.now }
func (c *fixedClock) After(time.Duration) (<-chan time.Time, func()) { return nil, func() {} }

func newTestScheduler(t *testing.T, opts Options, fns ...Function) (*Scheduler, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	if opts.Clock == nil {
		opts.Clock = &fixedClock{now: t0}
	}
	opts.Registerer = reg
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	s.SetFunctions(fns)
	return s, reg
}

func TestCreateRefusals(t *testing.T) {
	fn := newFunctionServer(t)
	s, _ := newTestScheduler(t, Options{MaxSchedules: 2},
		Function{"live", fn.URL, StateProductive}, Function{"wip", fn.URL, StateDraft})
	multibyte := `{"text":"` + strings.Repeat("é", MaxPayloadChars-11) + `"}` // 8000 characters, 15 989 bytes
	if _, err := s.Create("live", "@hourly", []byte(multibyte)); err != nil {
		t.Fatalf("a payload of exactly %d characters in %d bytes was refused: %v", MaxPayloadChars, len(multibyte), err)
	}
	tests := []struct {
		name, function, cron, payload, want string
		wantErr                             error
	}{
		{"unknown function", "nope", "@hourly", "{}", `no function "nope"`, ErrInvalid},
		{"draft function", "wip", "@hourly", "{}", `function "wip" is draft; only productive functions`, ErrInvalid},
		{"payload too long", "live", "@hourly", `{"text":"` + strings.Repeat("é", MaxPayloadChars-10) + `"}`, "the payload is 8001 characters; at most 8000", ErrInvalid},
		{"invalid JSON", "live", "@hourly", `{"a":`, "not valid JSON", ErrInvalid},
		{"sub-minute", "live", "@every 10s", "{}", "more often than once a minute", ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Create(tt.function, tt.cron, []byte(tt.payload))
			if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Create = %v; want %v with %q", err, tt.wantErr, tt.want)
			}
		})
	}
	if _, err := s.Create("live", "@daily", nil); err != nil {
		t.Fatal(err)
	}
	_, err := s.Create("live", "@daily", nil)
	if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), "there are 2 schedules, the most allowed") {
		t.Errorf("Create past the limit = %v; want ErrLimit", err)
	}
}

func TestInvocationsOverHours(t *testing.T) {
	fn := newFunctionServer(t)
	clock := &fixedClock{now: t0}
	s, reg := newTestScheduler(t, Options{Clock: clock}, Function{"refresh", fn.URL, StateProductive})
	sc, err := s.Create("refresh", "*/5 * * * *", []byte(`{"scope":"read"}`))
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Date(2026, 11, 26, 10, 5, 0, 0, time.UTC); !sc.State.NextRun.Equal(want) {
		t.Errorf("first next run = %v; want %v", sc.State.NextRun, want)
	}
	// Three hours, minute by minute, in milliseconds.
	for m := 1; m <= 180; m++ {
		clock.now = t0.Add(time.Duration(m) * time.Minute)
		s.RunDue(clock.now)
		s.Wait()
	}
	if n := fn.count(); n != 36 {
		t.Errorf("%d invocations in 3 hours of */5; want 36", n)
	}
	c := fn.calls[0]
	if c.body != `{"scope":"read"}` || c.contentType != "application/json" || c.id != sc.ID || c.schedAt != "2026-11-26T10:05:00Z" {
		t.Errorf("first invocation = %+v", c)
	}
	got := s.List()[0].State
	if got.LastOutcome != "success" || got.LastStatus != 200 || !got.NextRun.Equal(time.Date(2026, 11, 26, 13, 5, 0, 0, time.UTC)) {
		t.Errorf("state = %+v", got)
	}
	if v := testutil.ToFloat64(s.metrics.invocations.WithLabelValues("refresh", "success")); v != 36 {
		t.Errorf("success count = %v; want 36", v)
	}
	if problems, _ := testutil.GatherAndLint(reg); len(problems) > 0 {
		t.Errorf("promlint: %v", problems)
	}
}

func TestFailuresAreRecorded(t *testing.T) {
	fn := newFunctionServer(t)
	clock := &fixedClock{now: t0}
	s, _ := newTestScheduler(t, Options{Clock: clock, InvokeTimeout: 100 * time.Millisecond}, Function{"f", fn.URL, StateProductive})
	sc, _ := s.Create("f", "* * * * *", nil)

	fn.status.Store(500)
	clock.now = t0.Add(time.Minute)
	s.RunDue(clock.now)
	s.Wait()
	if st := s.List()[0].State; st.LastOutcome != "failure" || st.LastStatus != 500 || !strings.Contains(st.LastError, "answered 500") {
		t.Errorf("after a 500: %+v", st)
	}

	fn.status.Store(200)
	fn.mu.Lock()
	fn.block = make(chan struct{})
	fn.mu.Unlock()
	clock.now = t0.Add(2 * time.Minute)
	s.RunDue(clock.now)
	s.Wait() // the invocation times out after 100 ms
	close(fn.block)
	if st := s.List()[0].State; st.LastOutcome != "failure" || !strings.Contains(st.LastError, "deadline exceeded") {
		t.Errorf("after a timeout: %+v", st)
	}
	if v := testutil.ToFloat64(s.metrics.lastSuccess.WithLabelValues(sc.ID)); v != 0 {
		t.Errorf("last_success = %v; want 0", v)
	}
}

func TestOverlapSkips(t *testing.T) {
	fn := newFunctionServer(t)
	fn.block = make(chan struct{})
	clock := &fixedClock{now: t0}
	s, _ := newTestScheduler(t, Options{Clock: clock}, Function{"slow", fn.URL, StateProductive})
	s.Create("slow", "* * * * *", nil)
	clock.now = t0.Add(time.Minute)
	s.RunDue(clock.now)
	for i := 0; fn.count() == 0 && i < 500; i++ {
		time.Sleep(2 * time.Millisecond)
	}
	clock.now = t0.Add(2 * time.Minute)
	s.RunDue(clock.now) // the first run is still going
	close(fn.block)
	s.Wait()
	if v := testutil.ToFloat64(s.metrics.invocations.WithLabelValues("slow", "skipped")); v != 1 {
		t.Errorf("skipped = %v; want 1", v)
	}
	if n := fn.count(); n != 1 {
		t.Errorf("%d invocations; want 1", n)
	}
	st := s.List()[0].State
	if st.LastSkipped == nil || !st.LastSkipped.Equal(t0.Truncate(time.Minute).Add(2*time.Minute)) || st.LastRun == nil || !st.LastSkipped.After(*st.LastRun) {
		t.Errorf("state after a skip: %+v; want the skipped slot recorded after the last run", st)
	}
}

type panickingInvoker struct{ calls atomic.Int32 }

func (p *panickingInvoker) Invoke(context.Context, string, []byte, http.Header) (int, error) {
	if p.calls.Add(1) == 1 {
		panic("boom")
	}
	return 204, nil
}

func TestPanicDoesNotStopTheScheduler(t *testing.T) {
	inv := &panickingInvoker{}
	clock := &fixedClock{now: t0}
	s, _ := newTestScheduler(t, Options{Clock: clock, Invoker: inv}, Function{"f", "http://127.0.0.1:1/", StateProductive})
	s.Create("f", "* * * * *", nil)
	for m := 1; m <= 3; m++ {
		clock.now = t0.Add(time.Duration(m) * time.Minute)
		s.RunDue(clock.now)
		s.Wait()
		if m == 1 {
			if st := s.List()[0].State; st.LastOutcome != "failure" || !strings.Contains(st.LastError, "panic: boom") {
				t.Errorf("after the panic: %+v", st)
			}
		}
	}
	if n := inv.calls.Load(); n != 3 {
		t.Errorf("%d invocations; want 3: a panic must not keep the slot", n)
	}
	if st := s.List()[0].State; st.LastOutcome != "success" || st.LastStatus != 204 {
		t.Errorf("after recovering: %+v", st)
	}
}

func TestUndeployDeletes(t *testing.T) {
	fn := newFunctionServer(t)
	var logs bytes.Buffer
	s, _ := newTestScheduler(t, Options{Logger: slog.New(slog.NewJSONHandler(&logs, nil))},
		Function{"a", fn.URL, StateProductive}, Function{"b", fn.URL, StateProductive})
	sa, _ := s.Create("a", "0 6 * * *", []byte(`{"x":1}`))
	sb, _ := s.Create("b", "@hourly", nil)
	s.SetFunctions([]Function{{"a", fn.URL, StateDraft}, {"b", fn.URL, StateProductive}})
	if l := s.List(); len(l) != 1 || l[0].ID != sb.ID {
		t.Errorf("after a goes draft: %+v; want only b's schedule", l)
	}
	for _, want := range []string{`"id":"` + sa.ID + `"`, `"cron":"0 6 * * *"`, `"payload":"{\"x\":1}"`, "its function is undeployed"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the deletion log lacks %s: %s", want, logs.String())
		}
	}
	s.SetFunctions(nil)
	if l := s.List(); len(l) != 0 {
		t.Errorf("after every function is gone: %+v", l)
	}
}

func TestRestartKeepsSchedules(t *testing.T) {
	fn := newFunctionServer(t)
	state := filepath.Join(t.TempDir(), "schedules.json")
	clock := &fixedClock{now: t0}
	s, _ := newTestScheduler(t, Options{Clock: clock, StateFile: state}, Function{"f", fn.URL, StateProductive})
	sc, _ := s.Create("f", "0 * * * *", []byte(`{"n":1}`))
	clock.now = time.Date(2026, 11, 26, 11, 0, 0, 0, time.UTC)
	s.RunDue(clock.now)
	s.Wait()

	// egressd is down from 11:00 to 14:30; the runs at 12, 13 and 14 are not replayed.
	later := &fixedClock{now: time.Date(2026, 11, 26, 14, 30, 0, 0, time.UTC)}
	s2, _ := newTestScheduler(t, Options{Clock: later, StateFile: state}, Function{"f", fn.URL, StateProductive})
	l := s2.List()
	if len(l) != 1 || l[0].ID != sc.ID || l[0].Payload != `{"n":1}` || l[0].State.LastOutcome != "success" {
		t.Fatalf("after restart: %+v", l)
	}
	if want := time.Date(2026, 11, 26, 15, 0, 0, 0, time.UTC); !l[0].State.NextRun.Equal(want) {
		t.Errorf("next run after restart = %v; want %v", l[0].State.NextRun, want)
	}
	s2.RunDue(later.now)
	s2.Wait()
	if n := fn.count(); n != 1 {
		t.Errorf("%d invocations; want 1: missed runs are not replayed", n)
	}
}

func TestRunNow(t *testing.T) {
	fn := newFunctionServer(t)
	s, _ := newTestScheduler(t, Options{}, Function{"f", fn.URL, StateProductive})
	sc, _ := s.Create("f", "@yearly", []byte(`{}`))
	got, err := s.RunNow(sc.ID)
	if err != nil || got.State.LastOutcome != "success" || fn.count() != 1 {
		t.Errorf("RunNow = %+v, %v; %d calls", got.State, err, fn.count())
	}
	if _, err := s.RunNow("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("RunNow(unknown) = %v; want ErrNotFound", err)
	}
	var js map[string]any
	b, _ := json.Marshal(got)
	json.Unmarshal(b, &js)
	if js["state"].(map[string]any)["last_outcome"] != "success" {
		t.Errorf("JSON = %s", b)
	}
}

// TestRealClockFires is the one check with the real clock and real timers: a
// schedule due in 300ms fires then, stamped with the time it was due. (Cron fires
// once a minute at most; the next run is set directly, so the test takes a second,
// not a minute, and its window is wide for a loaded machine.)
func TestRealClockFires(t *testing.T) {
	fn := newFunctionServer(t)
	s, _ := newTestScheduler(t, Options{Clock: realClock{}}, Function{"f", fn.URL, StateProductive})
	sc, err := s.Create("f", "@hourly", nil)
	if err != nil {
		t.Fatal(err)
	}
	due := time.Now().Add(300 * time.Millisecond).Truncate(time.Second).Add(time.Second) // a whole second ahead
	s.mu.Lock()
	s.entries[sc.ID].State.NextRun = due
	s.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(5 * time.Second)
	for fn.count() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	fired := time.Now()
	if fn.count() == 0 {
		t.Fatal("the schedule never fired")
	}
	fn.mu.Lock()
	stamp := fn.calls[0].schedAt
	fn.mu.Unlock()
	if stamp != due.UTC().Format(time.RFC3339) {
		t.Errorf("X-Egressd-Scheduled-Time = %s; want %s", stamp, due.UTC().Format(time.RFC3339))
	}
	if early := due.Sub(fired); early > 0 {
		t.Errorf("fired %v before it was due", early)
	}
	if late := fired.Sub(due); late > 2*time.Second {
		t.Errorf("fired %v after it was due; want well within 2s", late)
	}
}
