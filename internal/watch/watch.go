// Package watch calls a function after files change, for hot reloads.
//
// It watches directories, not files, so that every way a file changes is seen:
// written in place, replaced by an editor's rename, deleted and recreated, added to or
// removed from a directory, and the Kubernetes ConfigMap update, where the "..data"
// symlink is swapped to a new timestamped directory. Bursts of events are coalesced.
package watch

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Paths calls onChange after every burst of changes to paths (files or
// directories), debounce after the last event, until ctx is done. A burst that goes
// on calls it no later than maxWait after its first event: a stream of edits does not
// hold every reload back.
func Paths(ctx context.Context, paths []string, debounce time.Duration, log *slog.Logger, onChange func()) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	t := newTargets(paths)
	t.sync(w, log)

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var burst time.Time // the first event of the burst being debounced; zero: none
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if t.relevant(ev.Name) {
				now := time.Now()
				if burst.IsZero() {
					burst = now
				}
				timer.Reset(min(debounce, burst.Add(maxWait).Sub(now)))
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			log.Warn("file watch error", "error", err)
		case <-timer.C:
			// A directory may have been recreated or a path may have appeared: watch
			// what exists now before reading, so no later edit is missed.
			t.sync(w, log)
			burst = time.Time{}
			onChange()
		}
	}
}

// maxWait bounds how long a burst of events can hold a call back.
const maxWait = time.Second

// targets knows which directories to watch and which events in them matter.
type targets struct {
	dirs  map[string]bool            // configured directories: every event inside matters
	files map[string]map[string]bool // parent directory -> base names that matter
}

func newTargets(paths []string) *targets {
	t := &targets{dirs: map[string]bool{}, files: map[string]map[string]bool{}}
	for _, p := range paths {
		p = filepath.Clean(p)
		parent, base := filepath.Dir(p), filepath.Base(p)
		if t.files[parent] == nil {
			t.files[parent] = map[string]bool{}
		}
		// The path itself may be a file or a directory, and may change from one to the
		// other; its parent sees it created, removed and renamed either way.
		t.files[parent][base] = true
		t.dirs[p] = true
	}
	return t
}

// sync adds a watch on every configured path that is a directory now, and on every
// parent directory. Adding a watch twice is harmless.
func (t *targets) sync(w *fsnotify.Watcher, log *slog.Logger) {
	for parent := range t.files {
		if err := w.Add(parent); err != nil {
			log.Warn("cannot watch directory", "dir", parent, "error", err)
		}
	}
	for d := range t.dirs {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			if err := w.Add(d); err != nil {
				log.Warn("cannot watch directory", "dir", d, "error", err)
			}
		}
	}
}

// relevant reports whether an event on name may change the allowlist: anything in a
// configured directory, the configured names in a parent directory, and Kubernetes'
// "..data" entries, whose swap changes what every file link points to.
func (t *targets) relevant(name string) bool {
	dir, base := filepath.Dir(name), filepath.Base(name)
	if t.dirs[dir] {
		return true
	}
	if names := t.files[dir]; names != nil {
		return names[base] || strings.HasPrefix(base, "..")
	}
	return false
}
