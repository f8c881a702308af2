package cluster

import (
	"context"
	"fmt"
	"strings"
)

// Secrets keeps the secret store on etcd (a secrets.Remote): one key a secret,
// <prefix>secrets/<key>, holding the record the secrets package sealed (etcd and
// its backups never see a value). Reads come from the cache; writes are
// transactions on the mod revision a fresh read returned.
type Secrets struct {
	cache *dirCache
}

// NewSecrets reads the secrets from etcd; Run keeps them current.
func NewSecrets(ctx context.Context, c *Cluster) (*Secrets, error) {
	d, err := newDirCache(ctx, c, "secrets/")
	if err != nil {
		return nil, fmt.Errorf("cluster: reading the secrets from etcd: %w", err)
	}
	return &Secrets{d}, nil
}

// Run follows etcd until ctx ends, calling changed after each change.
func (s *Secrets) Run(ctx context.Context, changed func()) { s.cache.Run(ctx, changed) }

// Records is every sealed record, by secret key, from the cache.
func (s *Secrets) Records() map[string]string {
	out := map[string]string{}
	for k, e := range s.cache.snapshot() {
		out[strings.TrimPrefix(k, s.cache.dir)] = e.value
	}
	return out
}

// Fetch reads one record afresh, with its mod revision (0: absent).
func (s *Secrets) Fetch(ctx context.Context, key string) (string, int64, error) {
	return s.cache.fetch(ctx, key)
}

// Put writes a record if its key is still at rev (0: only if absent).
func (s *Secrets) Put(ctx context.Context, key, sealed string, rev int64) (bool, error) {
	return s.cache.put(ctx, key, sealed, rev)
}

// Delete deletes a record if its key is still at rev.
func (s *Secrets) Delete(ctx context.Context, key string, rev int64) (bool, error) {
	return s.cache.del(ctx, key, rev)
}
