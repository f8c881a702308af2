package secrets

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// ctx is the context of every store call in these tests.
var ctx = context.Background()

func newStore(t *testing.T, defaults map[string]string) (*Store, string, Key) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "secrets.enc")
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := Create(path, key, defaults, time.Now()); err != nil {
		t.Fatal(err)
	}
	s, err := Open(Options{File: path, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	return s, path, key
}

func TestRoundTrip(t *testing.T) {
	s, path, key := newStore(t, map[string]string{"default-token": "d"})
	if _, err := s.Create(ctx, "api-key", "v1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, "api-key", "again"); !errors.Is(err, ErrExists) {
		t.Errorf("Create twice = %v; want ErrExists", err)
	}
	v, err := s.Update(ctx, "api-key", "v2", 0)
	if err != nil || v != 2 {
		t.Fatalf("Update = %d, %v; want version 2", v, err)
	}
	// A second process opening the file sees the same.
	s2, err := Open(Options{File: path, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s2.Get("api-key")
	if err != nil || got.Value.Reveal() != "v2" || got.Version != 2 {
		t.Errorf("Get after reopen = %q v%d, %v; want v2 at version 2", got.Value.Reveal(), got.Version, err)
	}
	list, _ := s2.List(false)
	if len(list) != 1 || list[0].Key != "api-key" {
		t.Errorf("List(false) = %+v; want only api-key (defaults hidden)", list)
	}
	if all, _ := s2.List(true); len(all) != 2 {
		t.Errorf("List(true) = %+v; want 2 with the default", all)
	}
	if _, err := s.Update(ctx, "missing", "x", 0); !errors.Is(err, ErrNotFound) {
		t.Errorf("Update(missing) = %v; want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "api-key"); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Get("api-key"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after delete in another store = %v; want ErrNotFound at once", err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode = %v, %v; want 0600", fi.Mode(), err)
	}
	if _, err := os.Stat(path + ".bak"); err != nil {
		t.Errorf("no .bak kept: %v", err)
	}
}

func TestIfMatch(t *testing.T) {
	s, _, _ := newStore(t, nil)
	s.Create(ctx, "token", "a")
	if _, err := s.Update(ctx, "token", "b", 1); err != nil {
		t.Fatalf("Update with the current version: %v", err)
	}
	_, err := s.Update(ctx, "token", "c", 1)
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "version 2, not 1") {
		t.Errorf("Update with a stale version = %v; want ErrConflict naming both versions", err)
	}
	if got, _ := s.Get("token"); got.Value.Reveal() != "b" {
		t.Errorf("value after the refused update = %q; want b", got.Value.Reveal())
	}
}

func TestValidation(t *testing.T) {
	s, _, _ := newStore(t, nil)
	for _, key := range []string{"", "has space", "slash/no", strings.Repeat("k", 129), "ünïcode"} {
		if _, err := s.Create(ctx, key, "v"); !errors.Is(err, ErrInvalid) {
			t.Errorf("Create(%q) = %v; want ErrInvalid", key, err)
		}
	}
	if _, err := s.Create(ctx, strings.Repeat("k", 128), "v"); err != nil {
		t.Errorf("Create(128-character key) = %v", err)
	}
	if _, err := s.Create(ctx, "max", strings.Repeat("x", MaxValueLen)); err != nil {
		t.Errorf("Create(a value of exactly %d bytes) = %v; want it accepted", MaxValueLen, err)
	}
	if _, err := s.Update(ctx, "max", strings.Repeat("y", MaxValueLen), 0); err != nil {
		t.Errorf("Update(a value of exactly %d bytes) = %v; want it accepted", MaxValueLen, err)
	}
	if sec, _ := s.Get("max"); sec.Value.Len() != MaxValueLen {
		t.Errorf("the maximal value reads back as %d bytes", sec.Value.Len())
	}
	_, err := s.Create(ctx, "big", strings.Repeat("x", MaxValueLen+1))
	if !errors.Is(err, ErrInvalid) || strings.Contains(err.Error(), "xxxx") {
		t.Errorf("Create(too big) = %v; want ErrInvalid without the value", err)
	}
}

func TestWrongKey(t *testing.T) {
	_, path, _ := newStore(t, nil)
	other, _ := GenerateKey()
	before, _ := os.ReadFile(path)
	_, err := Open(Options{File: path, Key: other})
	if !errors.Is(err, ErrWrongKey) {
		t.Errorf("Open with another key = %v; want ErrWrongKey", err)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Error("the file changed after a failed open")
	}
}

func TestEveryByteFlipIsDetected(t *testing.T) {
	s, path, key := newStore(t, nil)
	s.Create(ctx, "a", "value-a")
	s.Create(ctx, "b", "value-b")
	good, _ := os.ReadFile(path)
	for i := range good {
		bad := append([]byte(nil), good...)
		bad[i] ^= 0x01
		if _, err := open(bad, []Key{key}); err == nil {
			t.Fatalf("flipping byte %d of %d went unnoticed", i, len(good))
		}
	}
	for _, n := range []int{0, 10, headerLen, headerLen + 16, len(good) - 1} {
		if _, err := open(good[:n], []Key{key}); err == nil {
			t.Errorf("a file truncated to %d bytes opened", n)
		}
	}
}

func TestRollbackIsDetected(t *testing.T) {
	s, path, _ := newStore(t, nil)
	s.Create(ctx, "a", "1")
	old, _ := os.ReadFile(path)
	s.Update(ctx, "a", "2", 0)
	// Put the older, validly sealed file back under the running store.
	if err := os.WriteFile(path+".tmp", old, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Rename(path+".tmp", path)
	if _, err := s.Get("a"); err == nil || !strings.Contains(err.Error(), "rolled back") {
		t.Errorf("Get after a rollback = %v; want a rollback error", err)
	}
	if _, err := s.Update(ctx, "a", "3", 0); err == nil {
		t.Error("Update over a rolled-back file succeeded; want a refusal")
	}
}

func TestRotate(t *testing.T) {
	s, path, oldKey := newStore(t, nil)
	s.Create(ctx, "a", "1")
	newKey, _ := GenerateKey()
	if err := s.Rotate(ctx, newKey); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Options{File: path, Key: oldKey}); !errors.Is(err, ErrWrongKey) {
		t.Errorf("Open with only the old key after rotation = %v; want ErrWrongKey", err)
	}
	// During a rotation the old key is the previous key: still fine.
	s2, err := Open(Options{File: path, Key: newKey, PreviousKey: &oldKey})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s2.Get("a"); err != nil || got.Value.Reveal() != "1" {
		t.Errorf("Get after rotation = %q, %v", got.Value.Reveal(), err)
	}
}

func TestConcurrentUpdatesLoseNothing(t *testing.T) {
	s, path, key := newStore(t, nil)
	for i := 0; i < 4; i++ {
		s.Create(ctx, "k"+strconv.Itoa(i), "0")
	}
	// Two stores on one file stand for two processes; each has goroutines updating.
	s2, err := Open(Options{File: path, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	type ack struct {
		key     string
		value   string
		version int64
	}
	var mu sync.Mutex
	acks := map[string][]ack{}
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		st := s
		if w%2 == 1 {
			st = s2
		}
		wg.Add(1)
		go func(w int, st *Store) {
			defer wg.Done()
			for i := 0; i < 15; i++ {
				k := "k" + strconv.Itoa((w+i)%4)
				v := strconv.Itoa(w) + "-" + strconv.Itoa(i)
				ver, err := st.Update(ctx, k, v, 0)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				acks[k] = append(acks[k], ack{k, v, ver})
				mu.Unlock()
			}
		}(w, st)
	}
	wg.Wait()
	for k, as := range acks {
		seen := map[int64]bool{}
		var last ack
		for _, a := range as {
			if seen[a.version] {
				t.Errorf("%s: version %d acknowledged twice: a lost update", k, a.version)
			}
			seen[a.version] = true
			if a.version > last.version {
				last = a
			}
		}
		got, err := s.Get(k)
		if err != nil || got.Version != last.version || got.Value.Reveal() != last.value {
			t.Errorf("%s = %q v%d; want the last acknowledged %q v%d", k, got.Value.Reveal(), got.Version, last.value, last.version)
		}
		if int(got.Version) != len(as)+1 {
			t.Errorf("%s is at version %d after %d updates; want %d", k, got.Version, len(as), len(as)+1)
		}
	}
}

func TestCreateRefusesToOverwrite(t *testing.T) {
	_, path, key := newStore(t, nil)
	if err := Create(path, key, nil, time.Now()); err == nil {
		t.Error("Create over an existing file succeeded")
	}
	kf := filepath.Join(t.TempDir(), "key")
	if err := WriteKeyFile(kf, key); err != nil {
		t.Fatal(err)
	}
	if err := WriteKeyFile(kf, key); err == nil {
		t.Error("WriteKeyFile over an existing file succeeded")
	}
	k2, err := ReadKeyFile(kf, nil)
	if err != nil || k2.ID() != key.ID() {
		t.Errorf("ReadKeyFile = %v, %v", k2.ID(), err)
	}
}
