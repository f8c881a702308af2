package secrets

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Remote is where a shared store keeps its secrets, one sealed record a key: etcd
// in cluster mode (cluster.Secrets). Reads come from a cache the remote keeps
// current; writes compare on the revision a fresh read returned, so that two
// replicas writing one key at once cannot both succeed on the same version.
type Remote interface {
	// Records is every sealed record by key, as this replica last saw them.
	Records() map[string]string
	// Fetch reads key afresh: its sealed record and revision, or rev 0 if absent.
	Fetch(ctx context.Context, key string) (sealed string, rev int64, err error)
	// Put writes sealed at key if key is still at rev (0: only if absent), and
	// returns once this replica's cache has it; false if key was not at rev.
	Put(ctx context.Context, key, sealed string, rev int64) (bool, error)
	// Delete deletes key if it is still at rev; false if it was not.
	Delete(ctx context.Context, key string, rev int64) (bool, error)
}

// ErrUnavailable is a write the shared store could not make: nothing was changed.
var ErrUnavailable = errors.New("the shared secret store (etcd) is unavailable; nothing was changed")

// ErrUnconfirmed is a write sent to etcd that etcd did not confirm: it was not
// acknowledged, and may yet be applied once etcd has a quorum again.
var ErrUnconfirmed = errors.New("the shared secret store (etcd) did not confirm the change (is a quorum of members up?); it was not acknowledged and may still be applied once etcd recovers: read it again before retrying")

// SharedOptions configure a shared Store.
type SharedOptions struct {
	Remote      Remote
	Key         Key
	PreviousKey *Key
	Now         func() time.Time
	Logger      *slog.Logger
	Registerer  prometheus.Registerer
}

// shared is a Store's state in shared mode.
type shared struct {
	remote Remote
	mu     sync.Mutex        // serializes Refresh
	seen   map[string]int64  // the highest version seen of each key: a lower one is a rollback
	opened map[string]opened // the last record opened for each key, so a refresh opens only what changed
}

// opened is a sealed record and what it opened to.
type opened struct {
	sealed string
	r      record
}

// OpenShared returns a store on remote. Every record must open with Key or
// PreviousKey: a store that does not is an error, as a file that does not open is.
func OpenShared(opts SharedOptions) (*Store, error) {
	fillDefaults(&opts.Now, &opts.Logger, &opts.Registerer)
	s := &Store{keys: []Key{opts.Key}, now: opts.Now, log: opts.Logger, mu: make(chan struct{}, 1),
		shared: &shared{remote: opts.Remote, seen: map[string]int64{}, opened: map[string]opened{}}}
	if opts.PreviousKey != nil {
		s.keys = append(s.keys, *opts.PreviousKey)
	}
	if err := s.refresh(); err != nil {
		return nil, fmt.Errorf("the shared secret store: %w", err)
	}
	var err error
	if s.ops, err = newMetrics(opts.Registerer, s); err != nil {
		return nil, err
	}
	return s, nil
}

// Refresh rebuilds what the store serves from the remote's cache: the remote calls
// it after each change its watch brings. A record that does not open, or that went
// back to an older version, is logged (by key, never value) and the last good one
// is served in its place.
func (s *Store) Refresh() {
	if err := s.refresh(); err != nil {
		s.log.Error("shared secret store", "error", err.Error())
	}
}

func (s *Store) refresh() error {
	sh := s.shared
	sh.mu.Lock()
	defer sh.mu.Unlock()
	old := s.snap.Load()
	p := &payload{Secrets: map[string]record{}}
	var bad []error
	for key, sealed := range sh.remote.Records() {
		r, err := sh.opened[key].r, error(nil)
		if sh.opened[key].sealed != sealed {
			r, err = openRecord(sealed, key, s.keys)
		}
		if err == nil && r.Version < sh.seen[key] {
			err = fmt.Errorf("secret %q went back from version %d to %d: it was rolled back; the newer version is served", key, sh.seen[key], r.Version)
		}
		if err != nil {
			bad = append(bad, err)
			if old != nil {
				if prev, ok := old.p.Secrets[key]; ok {
					p.Secrets[key] = prev
				}
			}
			continue
		}
		sh.seen[key] = r.Version
		sh.opened[key] = opened{sealed, r}
		p.Secrets[key] = r
	}
	for key := range sh.seen {
		if _, ok := p.Secrets[key]; !ok {
			delete(sh.seen, key) // deleted: a new secret of that name starts at 1
			delete(sh.opened, key)
		}
	}
	s.snap.Store(&snapshot{p: p})
	return errors.Join(bad...)
}

// maxSharedAttempts bounds the retries of a write whose key another replica wrote
// between the read and the write: each round, one of the writers wins.
const maxSharedAttempts = 100

// writeShared applies change to one key as it is in etcd now, in a transaction on
// the revision read, retried when another replica wrote the key in between. With
// If-Match, the retry sees the new version and fails with ErrConflict: of two
// replicas updating one version, exactly one wins.
func (s *Store) writeShared(ctx context.Context, op, key string, change func(*payload) error) (err error) {
	defer func() { s.count(op, err) }()
	remote := s.shared.remote
	for range maxSharedAttempts {
		sealed, rev, err := remote.Fetch(ctx, key)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		p := &payload{Secrets: map[string]record{}}
		if rev != 0 {
			r, err := openRecord(sealed, key, s.keys)
			if err != nil && op != "delete" { // a record that does not open can still go
				return err
			}
			p.Secrets[key] = r
		}
		if err := change(p); err != nil {
			return err
		}
		var ok bool
		if r, keep := p.Secrets[key]; keep {
			next, serr := sealRecord(s.keys[0], key, r)
			if serr != nil {
				return serr
			}
			ok, err = remote.Put(ctx, key, next, rev)
		} else {
			ok, err = remote.Delete(ctx, key, rev)
		}
		if err != nil {
			return fmt.Errorf("%w: %v", ErrUnconfirmed, err)
		}
		if ok {
			s.Refresh()
			return nil
		}
		// Someone else won this round: step aside a moment, less in step with them.
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: the request ended: %v", ErrBusy, ctx.Err())
		case <-time.After(time.Duration(mrand.Int64N(int64(2 * time.Millisecond)))):
		}
	}
	return fmt.Errorf("%w: %q is being written by other replicas; try again", ErrBusy, key)
}

// Reseal re-seals every record of a shared store under its key (secrets.key_file),
// opening them with that key or the previous one, one transaction each: a crash
// midway leaves each record sealed under the old key or the new, and the old key
// (secrets.previous_key_file) still opens the former.
func (s *Store) Reseal(ctx context.Context) error {
	if s.shared == nil {
		return errors.New("reseal is for a shared store; a file store rotates with rotate-key")
	}
	return s.rotateShared(ctx)
}

func (s *Store) rotateShared(ctx context.Context) error {
	for key := range s.shared.remote.Records() {
		err := s.writeShared(ctx, "rotate", key, func(*payload) error { return nil })
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	return nil
}

// A shared record is one secret, sealed on its own:
//
//	magic     "egressd-secret1\n" (16 bytes)
//	key id    8 bytes, as the file's
//	nonce     12 bytes
//	version   8 bytes, big-endian
//	sealed    the record's JSON, ciphertext and tag
//
// The associated data is the header and the secret's key, so a record moved to
// another key, or given another version, fails to open; a whole older record put
// back is caught by the version each replica has seen.
const (
	recordMagic     = "egressd-secret1\n"
	recordHeaderLen = len(recordMagic) + keyIDLen + nonceLen + 8
)

func sealRecord(k Key, key string, r record) (string, error) {
	plain, err := json.Marshal(r)
	if err != nil {
		return "", err
	}
	hdr := make([]byte, recordHeaderLen)
	copy(hdr, recordMagic)
	copy(hdr[len(recordMagic):], k.id[:])
	if _, err := rand.Read(hdr[len(recordMagic)+keyIDLen : len(recordMagic)+keyIDLen+nonceLen]); err != nil {
		return "", err
	}
	binary.BigEndian.PutUint64(hdr[recordHeaderLen-8:], uint64(r.Version))
	aead, err := gcm(k)
	if err != nil {
		return "", err
	}
	nonce := hdr[len(recordMagic)+keyIDLen : len(recordMagic)+keyIDLen+nonceLen]
	return string(aead.Seal(hdr, nonce, plain, append(hdr[:recordHeaderLen:recordHeaderLen], key...))), nil
}

func openRecord(sealed, key string, keys []Key) (record, error) {
	data := []byte(sealed)
	if len(data) < recordHeaderLen+16 || string(data[:len(recordMagic)]) != recordMagic {
		return record{}, fmt.Errorf("secret %q: not an egressd secret record, or truncated", key)
	}
	hdr := data[:recordHeaderLen]
	id := hdr[len(recordMagic) : len(recordMagic)+keyIDLen]
	nonce := hdr[len(recordMagic)+keyIDLen : len(recordMagic)+keyIDLen+nonceLen]
	version := int64(binary.BigEndian.Uint64(hdr[recordHeaderLen-8:]))
	for _, k := range keys {
		if string(id) != string(k.id[:]) {
			continue
		}
		aead, err := gcm(k)
		if err != nil {
			return record{}, err
		}
		plain, err := aead.Open(nil, nonce, data[recordHeaderLen:], append(hdr[:recordHeaderLen:recordHeaderLen], key...))
		if err != nil {
			return record{}, fmt.Errorf("secret %q fails authentication: it was changed, or moved from another key", key)
		}
		var r record
		if err := json.Unmarshal(plain, &r); err != nil || r.Version != version {
			return record{}, fmt.Errorf("secret %q decrypts but does not decode", key)
		}
		return r, nil
	}
	return record{}, fmt.Errorf("secret %q: %w: set secrets.key_file, or secrets.previous_key_file during a rotation", key, ErrWrongKey)
}

// Import copies sec, with its version and times, into a shared store: 'egressd
// secrets migrate'. An existing secret is left as it is (false) unless overwrite
// is set; an overwritten one gets a version above both, so that no replica takes
// it for a rollback.
func (s *Store) Import(ctx context.Context, sec Secret, overwrite bool) (bool, error) {
	if s.shared == nil {
		return false, errors.New("import is for a shared store")
	}
	if err := validate(sec.Key, sec.Value.Reveal()); err != nil {
		return false, err
	}
	imported := false
	err := s.writeShared(ctx, "create", sec.Key, func(p *payload) error {
		r := record{Value: sec.Value.Reveal(), Version: sec.Version, Created: sec.Created.UTC(), Updated: sec.Updated.UTC(), Default: sec.Default}
		if old, ok := p.Secrets[sec.Key]; ok {
			if !overwrite {
				return errKept
			}
			r.Version = max(r.Version, old.Version+1)
		}
		p.Secrets[sec.Key] = r
		imported = true
		return nil
	})
	if errors.Is(err, errKept) {
		return false, nil
	}
	return imported, err
}

// errKept is an import that leaves an existing secret as it is.
var errKept = errors.New("the secret exists and is kept")
