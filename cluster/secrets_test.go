package cluster

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/egressd/egressd/internal/etcdtest"
	"github.com/egressd/egressd/secrets"
)

// secretsReplica is one replica's secret store on etcd, its watch running.
func secretsReplica(t testing.TB, r *replica, key secrets.Key) *secrets.Store {
	t.Helper()
	remote, err := NewSecrets(context.Background(), r.c)
	if err != nil {
		t.Fatal(err)
	}
	s, err := secrets.OpenShared(secrets.SharedOptions{Remote: remote, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); remote.Run(ctx, s.Refresh) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

// eventuallyVersion waits up to d for s to serve key at version (0: absent).
func eventuallyVersion(t *testing.T, s *secrets.Store, key string, version int64, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < d {
		sec, err := s.Get(key)
		if version == 0 && errors.Is(err, secrets.ErrNotFound) || err == nil && sec.Version == version {
			return time.Since(start)
		}
		time.Sleep(time.Millisecond)
	}
	sec, err := s.Get(key)
	t.Fatalf("after %s %s is at version %d (%v); want %d", d, key, sec.Version, err, version)
	return 0
}

func TestSecretsSharedByReplicas(t *testing.T) {
	etcd := etcdtest.Start(t)
	key, _ := secrets.GenerateKey()
	ra, rb := newReplica(t, etcd.Endpoint), newReplica(t, etcd.Endpoint)
	a, b := secretsReplica(t, ra, key), secretsReplica(t, rb, key)
	ctx := context.Background()

	if _, err := a.Create(ctx, "oauth-token", "plaintext-one"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Create(ctx, "oauth-token", "other"); !errors.Is(err, secrets.ErrExists) {
		t.Errorf("creating on B what A created: %v; want ErrExists", err)
	}
	t.Logf("create reached B in %s", eventuallyVersion(t, b, "oauth-token", 1, time.Second))
	if v, err := b.Update(ctx, "oauth-token", "plaintext-two", 0); err != nil || v != 2 {
		t.Fatalf("update on B: %d %v", v, err)
	}
	t.Logf("update reached A in %s", eventuallyVersion(t, a, "oauth-token", 2, time.Second))
	if sec, _ := a.Get("oauth-token"); sec.Value.Reveal() != "plaintext-two" {
		t.Errorf("A reads the value B wrote: got another")
	}

	// Two replicas update version 2 with If-Match at once: exactly one wins.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, s := range []*secrets.Store{a, b} {
		wg.Add(1)
		go func() { defer wg.Done(); _, errs[i] = s.Update(ctx, "oauth-token", "racer", 2) }()
	}
	wg.Wait()
	if (errs[0] == nil) == (errs[1] == nil) || !errors.Is(errors.Join(errs...), secrets.ErrConflict) {
		t.Errorf("If-Match updates of one version on two replicas: %v, %v; want one success and one ErrConflict", errs[0], errs[1])
	}
	// Without If-Match the last writer wins, and versions still only grow.
	many := make([]error, 20)
	for i := range many {
		wg.Add(1)
		s := []*secrets.Store{a, b}[i%2]
		go func() { defer wg.Done(); _, many[i] = s.Update(ctx, "oauth-token", "many", 0) }()
	}
	wg.Wait()
	if err := errors.Join(many...); err != nil {
		t.Errorf("updates without If-Match, contending: %v; want every one made", err)
	}
	eventuallyVersion(t, a, "oauth-token", 23, time.Second)
	eventuallyVersion(t, b, "oauth-token", 23, time.Second)

	// etcd never holds a value in the clear.
	raw, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	resp, err := raw.Get(ctx, "/test/secrets/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("etcd: %v %v", resp, err)
	}
	old := resp.Kvs[0].Value
	for _, plain := range []string{"plaintext", "many", "racer"} {
		if strings.Contains(string(old), plain) {
			t.Errorf("etcd holds %q in the clear", plain)
		}
	}

	// A record moved to another key does not open there; an older one put back is
	// not served over the newer.
	if _, err := raw.Put(ctx, "/test/secrets/moved", string(old)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Update(ctx, "oauth-token", "newest", 0); err != nil {
		t.Fatal(err)
	}
	eventuallyVersion(t, b, "oauth-token", 24, time.Second)
	if _, err := raw.Put(ctx, "/test/secrets/oauth-token", string(old)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the watch brings the rollback; it must be refused
	if sec, err := b.Get("oauth-token"); err != nil || sec.Version != 24 || sec.Value.Reveal() != "newest" {
		t.Errorf("after a rollback in etcd B serves version %d (%v); want 24", sec.Version, err)
	}
	if _, err := b.Get("moved"); err == nil {
		t.Errorf("a record moved to another key was served")
	}

	if err := a.Delete(ctx, "moved"); err != nil {
		t.Errorf("delete of a record that does not open: %v", err)
	}
	// The key holds the rolled-back record, which opens: delete works on it.
	if err := b.Delete(ctx, "oauth-token"); err != nil {
		t.Fatalf("delete: %v", err)
	}
	eventuallyVersion(t, a, "oauth-token", 0, time.Second)
	if err := a.Delete(ctx, "oauth-token"); !errors.Is(err, secrets.ErrNotFound) {
		t.Errorf("deleting twice: %v; want ErrNotFound", err)
	}

	// During an outage reads are served from the cache and writes fail, changing nothing.
	if _, err := a.Create(ctx, "kept", "v"); err != nil {
		t.Fatal(err)
	}
	eventuallyVersion(t, b, "kept", 1, time.Second)
	etcd.Stop()
	if _, err := b.Update(ctx, "kept", "lost", 0); !errors.Is(err, secrets.ErrUnavailable) && !errors.Is(err, secrets.ErrUnconfirmed) {
		t.Errorf("update with etcd down: %v; want ErrUnavailable", err)
	}
	if sec, err := b.Get("kept"); err != nil || sec.Value.Reveal() != "v" {
		t.Errorf("read during the outage: %v", err)
	}
	etcd.Restart()
	if sec, err := b.Get("kept"); err != nil || sec.Version != 1 {
		t.Errorf("after the outage: %d %v; want version 1 (the refused update not made)", sec.Version, err)
	}
}

func TestSecretsRotation(t *testing.T) {
	etcd := etcdtest.Start(t)
	oldKey, _ := secrets.GenerateKey()
	newKey, _ := secrets.GenerateKey()
	r := newReplica(t, etcd.Endpoint)
	a := secretsReplica(t, r, oldKey)
	ctx := context.Background()
	for _, k := range []string{"one", "two", "three"} {
		if _, err := a.Create(ctx, k, "value-"+k); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Rotate(ctx, newKey); err != nil {
		t.Fatal(err)
	}
	// A replica with only the new key opens every value.
	remote, err := NewSecrets(ctx, newReplica(t, etcd.Endpoint).c)
	if err != nil {
		t.Fatal(err)
	}
	b, err := secrets.OpenShared(secrets.SharedOptions{Remote: remote, Key: newKey})
	if err != nil {
		t.Fatalf("opening with the new key alone after a rotation: %v", err)
	}
	for _, k := range []string{"one", "two", "three"} {
		if sec, err := b.Get(k); err != nil || sec.Value.Reveal() != "value-"+k {
			t.Errorf("%s after rotation: %v", k, err)
		}
	}
	// With the old key alone, nothing opens.
	if _, err := secrets.OpenShared(secrets.SharedOptions{Remote: remote, Key: oldKey}); err == nil {
		t.Errorf("the old key alone opened values re-sealed under the new one")
	}
}
