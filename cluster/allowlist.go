package cluster

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/egressd/egressd/managed"
)

// Allowlist is the managed allowlist on etcd (a managed.Store): one key a rule,
// <prefix>allowlist/<rule>, with the rule as its value. Add and Remove are
// transactions (create only if absent, delete only if present), answered once
// etcd has committed them and this replica's cache has them; List reads the cache,
// which a watch keeps current, so every replica applies a change as its watch
// delivers it.
type Allowlist struct {
	cache *dirCache
}

// NewAllowlist reads the managed rules from etcd; Run keeps them current.
func NewAllowlist(ctx context.Context, c *Cluster) (*Allowlist, error) {
	d, err := newDirCache(ctx, c, "allowlist/")
	if err != nil {
		return nil, fmt.Errorf("cluster: reading the managed allowlist from etcd: %w", err)
	}
	return &Allowlist{d}, nil
}

// Run follows etcd until ctx ends, calling changed after each change to the rules.
func (a *Allowlist) Run(ctx context.Context, changed func()) { a.cache.Run(ctx, changed) }

// List returns the managed rules in the order they were added, from the cache.
func (a *Allowlist) List() ([]string, error) {
	entries := slices.Collect(maps.Values(a.cache.snapshot()))
	slices.SortFunc(entries, func(x, y entry) int { return cmp.Compare(x.created, y.created) })
	texts := make([]string, len(entries))
	for i, e := range entries {
		texts[i] = e.value
	}
	return texts, nil
}

// Add adds a rule in a transaction that creates its key only if it is absent.
func (a *Allowlist) Add(text string) error {
	text, err := managed.Validate(text)
	if err != nil {
		return err
	}
	ok, err := a.cache.put(context.Background(), text, text, 0)
	if err != nil {
		return fmt.Errorf("%w: etcd: %v", managed.ErrUnconfirmed, err)
	}
	if !ok {
		return fmt.Errorf("%w: %s", managed.ErrExists, text)
	}
	return nil
}

// Remove removes a rule in a transaction that deletes its key only if present.
func (a *Allowlist) Remove(text string) error {
	text = strings.TrimSpace(text)
	ok, err := a.cache.del(context.Background(), text, -1)
	if err != nil {
		return fmt.Errorf("%w: etcd: %v", managed.ErrUnconfirmed, err)
	}
	if !ok {
		return fmt.Errorf("%w: %s", managed.ErrNotFound, text)
	}
	return nil
}
