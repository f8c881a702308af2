// Package secrets keeps the secrets functions use (API keys, OAuth tokens) in one
// encrypted file, and serves them: functions read and update values through the
// runtime API, operators create, list and delete secrets through the admin API or the
// CLI. A value is never shown to an operator after it is created, and never appears in
// a log, a metric or an error.
//
// Every accepted write is durable before it is acknowledged, and two processes never
// write at once (flock), so no acknowledged write is lost. A file that fails
// authentication is never overwritten.
package secrets

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"regexp"
	"sort"
	"sync/atomic"
	"time"

	"github.com/egressd/egressd/internal/defaults"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/egressd/egressd/internal/atomicfile"
)

// Limits on what a secret may be.
const (
	MaxKeyLen   = 128
	MaxValueLen = 64 << 10
)

var keyRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// The errors operations return; the HTTP layer maps them to status codes.
var (
	ErrNotFound = errors.New("no such secret")
	ErrExists   = errors.New("the secret exists")
	ErrConflict = errors.New("the secret changed since it was read")
	ErrInvalid  = errors.New("invalid secret")
	// ErrBusy is a write that could not take the store's lock in time, or whose
	// client went away first: nothing was written.
	ErrBusy = errors.New("the secrets file is busy; nothing was changed")
)

// Secret is one secret, with its value hidden behind Value.
type Secret struct {
	Key     string
	Value   Value
	Version int64
	Created time.Time
	Updated time.Time
	Default bool // seeded by 'egressd secrets init --defaults'
}

// Info is what a listing shows of a secret: never its value.
type Info struct {
	Key     string    `json:"key"`
	Version int64     `json:"version"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	Default bool      `json:"default,omitempty"`
}

// Options configure a Store.
type Options struct {
	// File is the secrets file.
	File string
	// Key seals every write. PreviousKey, if set, also opens files (during a rotation).
	Key         Key
	PreviousKey *Key
	// LockTimeout bounds the wait for the store's lock (another write of this
	// process, or the file lock of another). If zero, 5s.
	LockTimeout time.Duration
	// Now is the clock for created and updated times. If nil, time.Now.
	Now        func() time.Time
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Store is an open secrets file. It is safe for concurrent use, and for use by
// several processes on one file.
type Store struct {
	path string
	keys []Key // keys[0] writes
	now  func() time.Time
	log  *slog.Logger
	ops  *prometheus.CounterVec
	// mu serializes writes and reloads in this process: a channel, so that a wait
	// for it can give up.
	mu          chan struct{}
	lockTimeout time.Duration
	snap        atomic.Pointer[snapshot]
	highest     int64 // the highest generation seen; a lower one is a rollback
	// shared is set for a store on a Remote (etcd), whose snapshot Refresh builds.
	shared *shared
}

// snapshot is the content of the file as last read, and which file that was.
type snapshot struct {
	p  *payload
	id fileID
}

// Create writes a new store at path, sealed with key, holding defaults (marked as
// such). It refuses to overwrite an existing file.
func Create(path string, key Key, defaults map[string]string, now time.Time) error {
	if _, err := os.Stat(path); err == nil {
		return existsError(path)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	lk, err := lockFile(ctx, path+".lock")
	if err != nil {
		return fmt.Errorf("locking %s: %w", path+".lock", err)
	}
	defer lk.unlock()
	// Again under the lock: two processes creating at once must not both write.
	if _, err := os.Stat(path); err == nil {
		return existsError(path)
	}
	atomicfile.RemoveStale(path)
	p := &payload{Generation: 1, Secrets: map[string]record{}}
	for k, v := range defaults {
		if err := validate(k, v); err != nil {
			return err
		}
		p.Secrets[k] = record{Value: v, Version: 1, Created: now.UTC(), Updated: now.UTC(), Default: true}
	}
	data, err := seal(key, p)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, data)
}

// existsError is Create's refusal to overwrite: errors.Is(err, fs.ErrExist) holds.
type existsError string

func (e existsError) Error() string {
	return string(e) + " exists; egressd never overwrites a secrets file"
}
func (e existsError) Is(target error) bool { return target == fs.ErrExist }

// Open reads and authenticates the store at opts.File. A missing, truncated,
// tampered or foreign file is an error, and the file is left as it is.
func Open(opts Options) (*Store, error) {
	fillDefaults(&opts.Now, &opts.Logger, &opts.Registerer)
	if opts.LockTimeout == 0 {
		opts.LockTimeout = defaults.SecretsLockTimeout
	}
	s := &Store{path: opts.File, keys: []Key{opts.Key}, now: opts.Now, log: opts.Logger,
		mu: make(chan struct{}, 1), lockTimeout: opts.LockTimeout}
	if opts.PreviousKey != nil {
		s.keys = append(s.keys, *opts.PreviousKey)
	}
	if _, err := s.reload(); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("secrets file %s does not exist; create it with 'egressd secrets init'", opts.File)
		}
		return nil, fmt.Errorf("secrets file %s: %w", opts.File, err)
	}
	var err error
	if s.ops, err = newMetrics(opts.Registerer, s); err != nil {
		return nil, err
	}
	return s, nil
}

// fillDefaults gives a store's clock, logger and registerer their defaults.
func fillDefaults(now *func() time.Time, log **slog.Logger, reg *prometheus.Registerer) {
	if *now == nil {
		*now = time.Now
	}
	if *log == nil {
		*log = slog.New(slog.DiscardHandler)
	}
	if *reg == nil {
		*reg = prometheus.NewRegistry()
	}
}

// RemoveStale removes the temporary copies that a write killed midway (kill -9)
// leaves behind, under the file lock, so that a crash loop cannot fill the volume:
// egressd serve calls it at start. A lock it cannot have within a second is left for
// the next start.
func (s *Store) RemoveStale() {
	if s.shared != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	lk, err := lockFile(ctx, s.path+".lock")
	if err != nil {
		return
	}
	defer lk.unlock()
	if n := atomicfile.RemoveStale(s.path); n > 0 {
		s.log.Info("removed temporary files of interrupted writes", "file", s.path, "removed", n)
	}
}

// reload reads the file if it changed since the last read. s.mu must not be held by
// another goroutine of ours in a way that waits for this one; callers take it.
func (s *Store) reload() (*snapshot, error) {
	id, err := statID(s.path)
	if err != nil {
		return nil, err
	}
	if cur := s.snap.Load(); cur != nil && cur.id == id {
		return cur, nil
	}
	data, err := os.ReadFile(s.path)
	if err != nil {
		return nil, err
	}
	p, err := open(data, s.keys)
	if err != nil {
		return nil, err
	}
	if p.Generation < s.highest {
		return nil, fmt.Errorf("the secrets file went back from generation %d to %d: it was rolled back; egressd will not serve or overwrite it", s.highest, p.Generation)
	}
	s.highest = p.Generation
	snap := &snapshot{p: p, id: id}
	s.snap.Store(snap)
	return snap, nil
}

// current returns the store as it is on disk now: another process may have written.
func (s *Store) current() (*snapshot, error) {
	if s.shared != nil {
		return s.snap.Load(), nil // the cache the remote's watch keeps current
	}
	if id, err := statID(s.path); err == nil {
		if cur := s.snap.Load(); cur != nil && cur.id == id {
			return cur, nil // the common case: no lock
		}
	}
	s.mu <- struct{}{} // a write holds it for the lock timeout at most
	defer func() { <-s.mu }()
	return s.reload()
}

// Get returns the secret named key.
func (s *Store) Get(key string) (Secret, error) {
	snap, err := s.current()
	if err != nil {
		s.count("get", err)
		return Secret{}, err
	}
	r, ok := snap.p.Secrets[key]
	if !ok {
		s.count("get", ErrNotFound)
		return Secret{}, ErrNotFound
	}
	s.count("get", nil)
	return secretOf(key, r), nil
}

// List returns every secret's key, version and times, in key order; default secrets
// only when all is set. Values are not part of it.
func (s *Store) List(all bool) ([]Info, error) {
	snap, err := s.current()
	if err != nil {
		s.count("list", err)
		return nil, err
	}
	out := []Info{}
	for k, r := range snap.p.Secrets {
		if r.Default && !all {
			continue
		}
		out = append(out, Info{Key: k, Version: r.Version, Created: r.Created, Updated: r.Updated, Default: r.Default})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	s.count("list", nil)
	return out, nil
}

// Len is the number of secrets, for the metric.
func (s *Store) Len() int {
	if snap := s.snap.Load(); snap != nil {
		return len(snap.p.Secrets)
	}
	return 0
}

// Update replaces the value of an existing secret and returns its new version. With
// ifMatch above zero, the update happens only if the secret is still at that version.
func (s *Store) Update(ctx context.Context, key, value string, ifMatch int64) (int64, error) {
	var version int64
	err := s.writeKey(ctx, "update", key, func(p *payload) error {
		if err := validate(key, value); err != nil {
			return err
		}
		r, ok := p.Secrets[key]
		if !ok {
			return ErrNotFound
		}
		if ifMatch > 0 && r.Version != ifMatch {
			return fmt.Errorf("%w: it is at version %d, not %d", ErrConflict, r.Version, ifMatch)
		}
		r.Value, r.Version, r.Updated = value, r.Version+1, s.now().UTC()
		p.Secrets[key] = r
		version = r.Version
		return nil
	})
	return version, err
}

// Create adds a new secret.
func (s *Store) Create(ctx context.Context, key, value string) (Info, error) {
	var info Info
	err := s.writeKey(ctx, "create", key, func(p *payload) error {
		if err := validate(key, value); err != nil {
			return err
		}
		if _, ok := p.Secrets[key]; ok {
			return ErrExists
		}
		now := s.now().UTC()
		p.Secrets[key] = record{Value: value, Version: 1, Created: now, Updated: now}
		info = Info{Key: key, Version: 1, Created: now, Updated: now}
		return nil
	})
	return info, err
}

// Delete removes a secret; the next read of it is ErrNotFound.
func (s *Store) Delete(ctx context.Context, key string) error {
	return s.writeKey(ctx, "delete", key, func(p *payload) error {
		if _, ok := p.Secrets[key]; !ok {
			return ErrNotFound
		}
		delete(p.Secrets, key)
		return nil
	})
}

// Rotate re-seals the store under newKey, which writes from then on; the old key
// still opens files, as it would as secrets.previous_key_file.
func (s *Store) Rotate(ctx context.Context, newKey Key) error {
	if s.shared != nil {
		s.mu <- struct{}{}
		s.keys = append([]Key{newKey}, s.keys...)
		<-s.mu
		return s.rotateShared(ctx)
	}
	return s.write(ctx, "rotate", func(*payload) error {
		s.keys = append([]Key{newKey}, s.keys...) // under s.mu, like every use of s.keys
		return nil
	})
}

// writeKey applies a change to one key: in the file, or in the shared store.
func (s *Store) writeKey(ctx context.Context, op, key string, change func(*payload) error) error {
	if s.shared != nil {
		if err := validate(key, ""); err != nil {
			s.count(op, err)
			return err // nothing to read for a key that cannot be
		}
		return s.writeShared(ctx, op, key, change)
	}
	return s.write(ctx, op, change)
}

// write applies change to the file as it is on disk, under this process's mutex and
// the file lock, and returns once the result is durable. It waits for the locks until
// ctx is done or the lock timeout passes, whichever is first; a write whose ctx is
// done (its client went away) by the time it has the locks is not applied.
func (s *Store) write(ctx context.Context, op string, change func(*payload) error) (err error) {
	defer func() { s.count(op, err) }()
	ctx, cancel := context.WithTimeout(ctx, s.lockTimeout)
	defer cancel()
	select {
	case s.mu <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("%w: another write of this egressd held it for %s; try again", ErrBusy, s.lockTimeout)
	}
	defer func() { <-s.mu }()
	lk, err := lockFile(ctx, s.path+".lock")
	if errors.Is(err, errLocked) {
		return fmt.Errorf("%w: %s is %v for %s; try again", ErrBusy, s.path+".lock", err, s.lockTimeout)
	}
	if err != nil {
		return fmt.Errorf("locking the secrets file: %w", err)
	}
	defer lk.unlock()
	if ctx.Err() != nil {
		return fmt.Errorf("%w: the request was canceled", ErrBusy)
	}
	snap, err := s.reload()
	if err != nil {
		return err
	}
	p := snap.p.clone()
	if err := change(p); err != nil {
		return err
	}
	p.Generation++
	data, err := seal(s.keys[0], p)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(s.path, data); err != nil {
		return fmt.Errorf("writing the secrets file: %w", err)
	}
	id, err := statID(s.path)
	if err != nil {
		return err
	}
	s.highest = p.Generation
	s.snap.Store(&snapshot{p: p, id: id})
	return nil
}

func (p *payload) clone() *payload {
	c := &payload{Generation: p.Generation, Secrets: make(map[string]record, len(p.Secrets)+1)}
	for k, v := range p.Secrets {
		c.Secrets[k] = v
	}
	return c
}

func secretOf(key string, r record) Secret {
	return Secret{Key: key, Value: NewValue(r.Value), Version: r.Version, Created: r.Created, Updated: r.Updated, Default: r.Default}
}

// validate checks a key and value; the error names the key, never the value.
func validate(key, value string) error {
	if !keyRE.MatchString(key) {
		return fmt.Errorf("%w: key %q: use 1 to %d letters, digits, '-', '_' and '.'", ErrInvalid, truncate(key), MaxKeyLen)
	}
	if len(value) > MaxValueLen {
		return fmt.Errorf("%w: the value of %q is %d bytes; at most %d", ErrInvalid, key, len(value), MaxValueLen)
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

func (s *Store) count(op string, err error) {
	if s.ops == nil {
		return
	}
	s.ops.WithLabelValues(op, resultOf(err)).Inc()
}

func resultOf(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrNotFound):
		return "not_found"
	case errors.Is(err, ErrExists):
		return "exists"
	case errors.Is(err, ErrConflict):
		return "conflict"
	case errors.Is(err, ErrInvalid):
		return "invalid"
	case errors.Is(err, ErrBusy):
		return "busy"
	}
	return "error"
}
