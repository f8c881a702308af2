package secrets

import (
	"context"
	"errors"
	"os"
	"syscall"
	"time"
)

// fileLock is an exclusive flock on path, kept by one process at a time: two egressd
// processes (or the CLI and a daemon) never write the store at once.
type fileLock struct{ f *os.File }

// errLocked is a lock that another process held for as long as we could wait.
var errLocked = errors.New("held by another process")

// lockFile takes the lock, waiting until ctx is done at most: a process that holds
// it and is frozen must not pile up every writer behind it.
func lockFile(ctx context.Context, path string) (*fileLock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	wait := time.Millisecond
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return &fileLock{f}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			return nil, errLocked
		case <-t.C:
		}
		wait = min(wait*2, 50*time.Millisecond)
	}
}

func (l *fileLock) unlock() {
	syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	l.f.Close()
}

// inode returns a file's inode number.
func inode(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// fileGID returns a file's group.
func fileGID(fi os.FileInfo) (int, bool) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Gid), true
	}
	return 0, false
}
