package secrets

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// holdLock takes the store's file lock as another process would (flock locks belong
// to an open file, so another open of the same file contends like another process).
func holdLock(t *testing.T, path string) (release func()) {
	t.Helper()
	f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }
}

// TestForeignLockBounded: with the lock held by a frozen process, a write gives up
// after the lock timeout with ErrBusy and changes nothing, even once the lock is free.
func TestForeignLockBounded(t *testing.T) {
	s, path, key := newStore(t, map[string]string{"token": "v1"})
	s.lockTimeout = 200 * time.Millisecond
	release := holdLock(t, path)
	start := time.Now()
	_, err := s.Update(ctx, "token", "v2", 0)
	if took := time.Since(start); !errors.Is(err, ErrBusy) || took > 2*time.Second {
		t.Fatalf("Update under a foreign lock = %v after %v; want ErrBusy after about 200ms", err, took)
	}
	release()
	s2, err := Open(Options{File: path, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	if sec, _ := s2.Get("token"); sec.Version != 1 || sec.Value.Reveal() != "v1" {
		t.Errorf("after a refused write: version %d; want the secret untouched", sec.Version)
	}
}

// TestAbandonedWriteNotApplied: a write whose client goes away while it waits for
// the lock is not applied when the lock comes free.
func TestAbandonedWriteNotApplied(t *testing.T) {
	s, path, _ := newStore(t, map[string]string{"token": "v1"})
	release := holdLock(t, path)
	reqCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := s.Update(reqCtx, "token", "abandoned", 0)
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	cancel() // the client is gone
	time.Sleep(50 * time.Millisecond)
	release()
	if err := <-done; !errors.Is(err, ErrBusy) {
		t.Errorf("abandoned write = %v; want ErrBusy", err)
	}
	if sec, _ := s.Get("token"); sec.Value.Reveal() != "v1" {
		t.Error("the abandoned write was applied")
	}
}

// TestStaleTemporariesRemoved: the copies a kill -9 left beside the store go.
func TestStaleTemporariesRemoved(t *testing.T) {
	_, path, key := newStore(t, nil)
	dir := filepath.Dir(path)
	for _, name := range []string{".secrets.enc.tmp-123", ".secrets.enc.tmp-456"} {
		os.WriteFile(filepath.Join(dir, name), []byte("sealed copy"), 0o600)
	}
	os.WriteFile(filepath.Join(dir, ".other.tmp-1"), []byte("not ours"), 0o600)
	s, err := Open(Options{File: path, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	s.RemoveStale()
	left, _ := filepath.Glob(filepath.Join(dir, ".*.tmp-*"))
	if len(left) != 1 || filepath.Base(left[0]) != ".other.tmp-1" {
		t.Errorf("temporaries after Open: %v; want only .other.tmp-1", left)
	}
}

// TestKeyFileModes: a key readable by others, or by a group that is not egressd's,
// is warned about; 0600, and 0440 in egressd's own group, are not.
func TestKeyFileModes(t *testing.T) {
	k, _ := GenerateKey()
	dir := t.TempDir()
	tests := []struct {
		mode os.FileMode
		gid  int
		warn bool
	}{
		{0o600, os.Getegid(), false},
		{0o400, os.Getegid(), false},
		{0o440, os.Getegid(), false},
		{0o440, os.Getegid() + 1, true},
		{0o644, os.Getegid(), true},
		{0o604, os.Getegid(), true},
	}
	for i, tt := range tests {
		path := filepath.Join(dir, "key"+string(rune('a'+i)))
		if err := WriteKeyFile(path, k); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(path, os.Geteuid(), tt.gid); err != nil && tt.gid != os.Getegid() {
			t.Skipf("cannot give a file another group here: %v", err)
		}
		os.Chmod(path, tt.mode)
		warned := false
		if _, err := ReadKeyFile(path, func(string) { warned = true }); err != nil {
			t.Fatal(err)
		}
		if warned != tt.warn {
			t.Errorf("mode %04o group %d: warned %v; want %v", tt.mode, tt.gid, warned, tt.warn)
		}
	}
}
