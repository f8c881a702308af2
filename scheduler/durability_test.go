package scheduler

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestLoadFunctionsRefusesAnEmptyFile(t *testing.T) {
	dir := t.TempDir()
	for _, content := range []string{"", "\n  \n\n", "# functions are coming\n", "---\n"} {
		path := filepath.Join(dir, "functions.yaml")
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadFunctions(path); err == nil || !strings.Contains(err.Error(), `write "functions: []"`) {
			t.Errorf("LoadFunctions(%q) = %v; want an error saying how to remove every function", content, err)
		}
	}
	path := filepath.Join(dir, "none.yaml")
	os.WriteFile(path, []byte("functions: []\n"), 0o644)
	if fns, err := LoadFunctions(path); err != nil || len(fns) != 0 {
		t.Errorf("LoadFunctions(functions: []) = %v, %v; want no functions, no error", fns, err)
	}
}

// TestTruncatedFunctionsFileKeepsSchedules: the window of ": > f; cat new > f" is a
// failed reload, not an undeploy.
func TestTruncatedFunctionsFileKeepsSchedules(t *testing.T) {
	fn := newFunctionServer(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "functions.yaml")
	os.WriteFile(path, []byte("functions:\n  - name: f\n    url: "+fn.URL+"/\n    state: productive\n"), 0o644)
	s, reg := newTestScheduler(t, Options{StateFile: filepath.Join(dir, "state.json")})
	if err := s.ReloadFunctions(path); err != nil {
		t.Fatal(err)
	}
	sc, err := s.Create("f", "@hourly", nil)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(path, nil, 0o644)
	if err := s.ReloadFunctions(path); err == nil {
		t.Fatal("an empty functions file was accepted")
	}
	if l := s.List(); len(l) != 1 || l[0].ID != sc.ID {
		t.Errorf("after an empty functions file: %+v; want the schedule kept", l)
	}
	if got := testutil.ToFloat64(s.metrics.lastReload); got != 0 {
		t.Errorf("egressd_scheduler_functions_last_reload_success = %v; want 0", got)
	}
	if n, err := testutil.GatherAndCount(reg, "egressd_scheduler_functions_reloads_total"); err != nil || n != 2 {
		t.Errorf("reload counter series: %d, %v", n, err)
	}
}

// TestUndeployedSchedulesCanBeRestored: schedules deleted with their function are
// kept, across a restart, and come back with restore.
func TestUndeployedSchedulesCanBeRestored(t *testing.T) {
	fn := newFunctionServer(t)
	state := filepath.Join(t.TempDir(), "state.json")
	f := Function{"f", fn.URL, StateProductive}
	s, _ := newTestScheduler(t, Options{StateFile: state}, f)
	sc, _ := s.Create("f", "*/5 * * * *", []byte(`{"scope":"read"}`))
	s.SetFunctions(nil) // every function gone
	if len(s.List()) != 0 {
		t.Fatal("the schedule outlived its function")
	}
	if _, err := s.Restore(sc.ID); err == nil {
		t.Error("restored a schedule whose function is still gone")
	}

	s2, _ := newTestScheduler(t, Options{StateFile: state}, f) // a restart, the function back
	d := s2.Deleted()
	if len(d) != 1 || d[0].ID != sc.ID || d[0].Payload != `{"scope":"read"}` || d[0].Reason != "function removed from the functions file" {
		t.Fatalf("deleted after restart: %+v", d)
	}
	got, err := s2.Restore(sc.ID)
	if err != nil || got.ID != sc.ID || got.Cron != sc.Cron || got.Payload != sc.Payload {
		t.Fatalf("Restore = %+v, %v; want the schedule as it was", got, err)
	}
	if len(s2.Deleted()) != 0 || len(s2.List()) != 1 {
		t.Errorf("after restore: %d deleted, %d schedules", len(s2.Deleted()), len(s2.List()))
	}
	if _, err := s2.Restore(sc.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("restoring twice = %v; want not found", err)
	}
}

// TestChangesAreDurableOrNotMade: a create or delete whose state file cannot be
// written is refused and undone.
func TestChangesAreDurableOrNotMade(t *testing.T) {
	fn := newFunctionServer(t)
	dir := filepath.Join(t.TempDir(), "state")
	os.Mkdir(dir, 0o755)
	s, _ := newTestScheduler(t, Options{StateFile: filepath.Join(dir, "state.json")}, Function{"f", fn.URL, StateProductive})
	kept, err := s.Create("f", "@hourly", nil)
	if err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(dir) // the volume is gone: nothing can be written
	if _, err := s.Create("f", "@daily", nil); !errors.Is(err, ErrNotSaved) {
		t.Errorf("Create with no state directory = %v; want ErrNotSaved", err)
	}
	if err := s.Delete(kept.ID); !errors.Is(err, ErrNotSaved) {
		t.Errorf("Delete with no state directory = %v; want ErrNotSaved", err)
	}
	if l := s.List(); len(l) != 1 || l[0].ID != kept.ID {
		t.Errorf("after refused changes: %+v; want the one saved schedule", l)
	}
	os.Mkdir(dir, 0o755)
	if err := s.Delete(kept.ID); err != nil {
		t.Errorf("Delete once the state directory is back: %v", err)
	}
}
