package cluster

import (
	"context"
	"maps"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// entry is one key as the cache holds it.
type entry struct {
	value   string
	created int64 // create revision: the order keys were added in
	mod     int64 // mod revision: what a transaction compares on
}

// dirCache is a replica's copy of every key under one directory of the prefix,
// kept current by a watch. Reads are served from it; writes go to etcd and then
// wait (a little) for the watch to bring them, so that a change answered by this
// replica is in its own cache when it is answered.
type dirCache struct {
	c   *Cluster
	dir string

	mu      sync.Mutex
	entries map[string]entry // by key, with the directory
	rev     int64            // the revision the cache reflects
	applied chan struct{}    // closed, and replaced, each time rev moves
	resync  chan struct{}
}

// newDirCache reads dir; Run keeps it current.
func newDirCache(ctx context.Context, c *Cluster, dir string) (*dirCache, error) {
	d := &dirCache{c: c, dir: c.prefix + dir, applied: make(chan struct{}), resync: make(chan struct{}, 1)}
	if _, err := d.load(ctx); err != nil {
		return nil, err
	}
	c.OnReconnect(func() {
		select {
		case d.resync <- struct{}{}:
		default:
		}
	})
	return d, nil
}

// load replaces the cache with a fresh read and says whether it changed.
func (d *dirCache) load(ctx context.Context) (bool, error) {
	rctx, cancel := d.c.request(ctx)
	defer cancel()
	resp, err := d.c.client.Get(rctx, d.dir, clientv3.WithPrefix())
	if err != nil {
		return false, err
	}
	entries := make(map[string]entry, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		entries[string(kv.Key)] = entry{string(kv.Value), kv.CreateRevision, kv.ModRevision}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	changed := !maps.Equal(d.entries, entries)
	d.entries = entries
	d.advanceLocked(resp.Header.Revision)
	return changed, nil
}

func (d *dirCache) advanceLocked(rev int64) {
	if rev > d.rev {
		d.rev = rev
		close(d.applied)
		d.applied = make(chan struct{})
	}
}

// Run follows etcd until ctx ends, calling changed after each change. It reads
// afresh (not just resuming the watch) when the watch fails, when its revision was
// compacted, and when etcd comes back after an outage.
func (d *dirCache) Run(ctx context.Context, changed func()) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		d.mu.Lock()
		rev := d.rev
		d.mu.Unlock()
		// WithRequireLeader: a member cut off from the quorum ends the watch rather
		// than leaving it silently behind.
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		d.follow(ctx, d.c.client.Watch(wctx, d.dir, clientv3.WithPrefix(), clientv3.WithRev(rev+1)), changed)
		cancel()
		for ctx.Err() == nil {
			diff, err := d.load(ctx)
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
func (d *dirCache) follow(ctx context.Context, wch clientv3.WatchChan, changed func()) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.resync:
			return
		case resp, ok := <-wch:
			if !ok || resp.Err() != nil || resp.Canceled {
				return
			}
			if len(resp.Events) == 0 {
				continue
			}
			d.mu.Lock()
			for _, ev := range resp.Events {
				key := string(ev.Kv.Key)
				if ev.Type == clientv3.EventTypeDelete {
					delete(d.entries, key)
				} else {
					d.entries[key] = entry{string(ev.Kv.Value), ev.Kv.CreateRevision, ev.Kv.ModRevision}
				}
			}
			d.advanceLocked(resp.Header.Revision)
			d.mu.Unlock()
			changed()
		}
	}
}

// snapshot is a copy of the entries.
func (d *dirCache) snapshot() map[string]entry {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.entries)
}

// put writes value at key in a transaction that succeeds only if the key's mod
// revision is still rev (0: only if absent), and waits for the cache to have it.
func (d *dirCache) put(ctx context.Context, key, value string, rev int64) (bool, error) {
	return d.txn(ctx, key, rev, clientv3.OpPut(d.dir+key, value))
}

// del deletes key in a transaction that succeeds only if its mod revision is
// still rev (-1: whatever it is, as long as it exists).
func (d *dirCache) del(ctx context.Context, key string, rev int64) (bool, error) {
	return d.txn(ctx, key, rev, clientv3.OpDelete(d.dir+key))
}

func (d *dirCache) txn(ctx context.Context, key string, rev int64, op clientv3.Op) (bool, error) {
	cmp := clientv3.Compare(clientv3.ModRevision(d.dir+key), "=", rev)
	if rev < 0 {
		cmp = clientv3.Compare(clientv3.CreateRevision(d.dir+key), ">", 0)
	}
	ctx, cancel := d.c.request(ctx)
	defer cancel()
	resp, err := d.c.client.Txn(ctx).If(cmp).Then(op).Commit()
	if err != nil {
		return false, err
	}
	if resp.Succeeded {
		d.await(resp.Header.Revision)
	}
	return resp.Succeeded, nil
}

// fetch reads key afresh (a linearizable read): its value and mod revision, or 0
// when it is absent.
func (d *dirCache) fetch(ctx context.Context, key string) (string, int64, error) {
	ctx, cancel := d.c.request(ctx)
	defer cancel()
	resp, err := d.c.client.Get(ctx, d.dir+key)
	if err != nil {
		return "", 0, err
	}
	if len(resp.Kvs) == 0 {
		return "", 0, nil
	}
	return string(resp.Kvs[0].Value), resp.Kvs[0].ModRevision, nil
}

// await waits, up to the request timeout, for the cache to reach rev. The change
// is committed either way; the watch brings it.
func (d *dirCache) await(rev int64) {
	deadline := time.NewTimer(d.c.timeout)
	defer deadline.Stop()
	for {
		d.mu.Lock()
		done, applied := d.rev >= rev, d.applied
		d.mu.Unlock()
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
