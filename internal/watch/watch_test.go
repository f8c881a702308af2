package watch

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// TestStreamOfEditsStillCalls: edits 20ms apart, each inside the debounce of the
// last, still get a call at least once a second.
func TestStreamOfEditsStillCalls(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "a.txt")
	os.WriteFile(file, []byte("x\n"), 0o644)
	calls := make(chan struct{}, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		Paths(ctx, []string{file}, 100*time.Millisecond, slog.New(slog.DiscardHandler), func() { calls <- struct{}{} })
		close(done)
	}()
	defer func() { cancel(); <-done }()
	time.Sleep(50 * time.Millisecond)
	stop := time.After(2500 * time.Millisecond)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	n := 0
	for {
		select {
		case <-stop:
			if len(calls) < 2 {
				t.Errorf("%d calls during 2.5s of edits 20ms apart; want at least 2", len(calls))
			}
			return
		case <-tick.C:
			n++
			os.WriteFile(file, []byte(strings.Repeat("x", n%7+1)+"\n"), 0o644)
		}
	}
}
