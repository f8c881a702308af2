package cluster

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/egressd/egressd/managed"
)

// Allowlist is the managed allowlist on etcd (a managed.Store): one key a rule,
// <prefix>allowlist/<rule>, with the rule as its value. Add and Remove are
// transactions (create only if absent, delete only if present), answered once
// etcd has committed them and this replica's cache has them; List reads the cache,
// which a watch keeps current, so every replica applies a change as its watch
// delivers it.
type Allowlist struct {
	c   *Cluster
	dir string

	mu      sync.Mutex
	rules   map[string]rule // by key
	rev     int64           // the revision the cache reflects
	applied chan struct{}   // closed, and replaced, each time rev moves
	resync  chan struct{}
}

type rule struct {
	text    string
	created int64 // the create revision: the order rules were added in
}

// NewAllowlist reads the managed rules from etcd; Run keeps them current.
func NewAllowlist(ctx context.Context, c *Cluster) (*Allowlist, error) {
	a := &Allowlist{c: c, dir: c.prefix + "allowlist/", applied: make(chan struct{}), resync: make(chan struct{}, 1)}
	if _, err := a.load(ctx); err != nil {
		return nil, fmt.Errorf("cluster: reading the managed allowlist from etcd: %w", err)
	}
	c.OnReconnect(func() {
		select {
		case a.resync <- struct{}{}:
		default:
		}
	})
	return a, nil
}

// load replaces the cache with a fresh read and says whether the rules changed.
func (a *Allowlist) load(ctx context.Context) (bool, error) {
	rctx, cancel := a.c.request(ctx)
	defer cancel()
	resp, err := a.c.client.Get(rctx, a.dir, clientv3.WithPrefix())
	if err != nil {
		return false, err
	}
	rules := make(map[string]rule, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		rules[string(kv.Key)] = rule{string(kv.Value), kv.CreateRevision}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	changed := !mapsEqual(a.rules, rules)
	a.rules = rules
	a.advanceLocked(resp.Header.Revision)
	return changed, nil
}

func mapsEqual(x, y map[string]rule) bool {
	if len(x) != len(y) {
		return false
	}
	for k, v := range x {
		if y[k] != v {
			return false
		}
	}
	return true
}

func (a *Allowlist) advanceLocked(rev int64) {
	if rev > a.rev {
		a.rev = rev
		close(a.applied)
		a.applied = make(chan struct{})
	}
}

// Run follows etcd until ctx ends, calling changed after each change to the rules.
// It reads afresh (not just resuming the watch) when the watch fails, when its
// revision was compacted, and when etcd comes back after an outage.
func (a *Allowlist) Run(ctx context.Context, changed func()) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		a.mu.Lock()
		rev := a.rev
		a.mu.Unlock()
		// WithRequireLeader: a member cut off from the quorum ends the watch rather
		// than leaving it silently behind.
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		a.follow(ctx, a.c.client.Watch(wctx, a.dir, clientv3.WithPrefix(), clientv3.WithRev(rev+1)), changed)
		cancel()
		for ctx.Err() == nil {
			diff, err := a.load(ctx)
			if err == nil {
				backoff = 100 * time.Millisecond
				if diff {
					changed()
				}
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
		}
	}
}

// follow applies the watch's events until it fails or a resync is asked for.
func (a *Allowlist) follow(ctx context.Context, wch clientv3.WatchChan, changed func()) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.resync:
			return
		case resp, ok := <-wch:
			if !ok || resp.Err() != nil || resp.Canceled {
				return
			}
			if len(resp.Events) == 0 {
				continue
			}
			a.mu.Lock()
			for _, ev := range resp.Events {
				key := string(ev.Kv.Key)
				if ev.Type == clientv3.EventTypeDelete {
					delete(a.rules, key)
				} else {
					a.rules[key] = rule{string(ev.Kv.Value), ev.Kv.CreateRevision}
				}
			}
			a.advanceLocked(resp.Header.Revision)
			a.mu.Unlock()
			changed()
		}
	}
}

// List returns the managed rules in the order they were added, from the cache.
func (a *Allowlist) List() ([]string, error) {
	a.mu.Lock()
	rules := make([]rule, 0, len(a.rules))
	for _, r := range a.rules {
		rules = append(rules, r)
	}
	a.mu.Unlock()
	slices.SortFunc(rules, func(x, y rule) int { return cmp.Compare(x.created, y.created) })
	texts := make([]string, len(rules))
	for i, r := range rules {
		texts[i] = r.text
	}
	return texts, nil
}

// Add adds a rule in a transaction that creates its key only if it is absent.
func (a *Allowlist) Add(text string) error {
	text, err := managed.Validate(text)
	if err != nil {
		return err
	}
	key := a.dir + text
	ctx, cancel := a.c.request(context.Background())
	defer cancel()
	resp, err := a.c.client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, text)).
		Commit()
	if err != nil {
		return fmt.Errorf("%w: etcd: %v", managed.ErrUnavailable, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: %s", managed.ErrExists, text)
	}
	a.await(resp.Header.Revision)
	return nil
}

// Remove removes a rule in a transaction that deletes its key only if present.
func (a *Allowlist) Remove(text string) error {
	text = strings.TrimSpace(text)
	key := a.dir + text
	ctx, cancel := a.c.request(context.Background())
	defer cancel()
	resp, err := a.c.client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), ">", 0)).
		Then(clientv3.OpDelete(key)).
		Commit()
	if err != nil {
		return fmt.Errorf("%w: etcd: %v", managed.ErrUnavailable, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: %s", managed.ErrNotFound, text)
	}
	a.await(resp.Header.Revision)
	return nil
}

// await waits, a little, for the cache to reach rev, so that a change answered by
// this replica is in its own List (and so in force here) when it is answered. The
// change is committed either way; the watch brings it.
func (a *Allowlist) await(rev int64) {
	deadline := time.NewTimer(a.c.timeout)
	defer deadline.Stop()
	for {
		a.mu.Lock()
		done, applied := a.rev >= rev, a.applied
		a.mu.Unlock()
		if done {
			return
		}
		select {
		case <-applied:
		case <-deadline.C:
			return
		}
	}
}
