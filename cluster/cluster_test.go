package cluster

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/egressd/egressd/internal/etcdtest"
	"github.com/egressd/egressd/managed"
)

// replica is one egressd's view of the cluster: its own connection, managed
// allowlist and a channel told of each change its watch brings.
type replica struct {
	c       *Cluster
	a       *Allowlist
	reg     *prometheus.Registry
	changed chan struct{}
	stop    context.CancelFunc
}

func newReplica(t testing.TB, endpoint string) *replica {
	t.Helper()
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	c, err := Connect(ctx, Config{Endpoints: []string{endpoint}, Prefix: "/test/", DialTimeout: time.Second, HealthInterval: 100 * time.Millisecond},
		slog.New(slog.NewTextHandler(io.Discard, nil)), reg)
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewAllowlist(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{c: c, a: a, reg: reg, changed: make(chan struct{}, 100), stop: cancel}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); c.Run(ctx) }()
	go func() {
		defer wg.Done()
		a.Run(ctx, func() {
			select {
			case r.changed <- struct{}{}:
			default:
			}
		})
	}()
	t.Cleanup(func() { cancel(); wg.Wait(); c.Close() })
	return r
}

// eventually waits up to d for the replica's rules to be want.
func (r *replica) eventually(t *testing.T, d time.Duration, want ...string) {
	t.Helper()
	deadline := time.After(d)
	for {
		got, _ := r.a.List()
		if slices.Equal(got, want) {
			return
		}
		select {
		case <-r.changed:
		case <-deadline:
			t.Fatalf("after %s the rules are %q; want %q", d, got, want)
		}
	}
}

func TestAllowlistSharedByReplicas(t *testing.T) {
	etcd := etcdtest.Start(t)
	a, b := newReplica(t, etcd.Endpoint), newReplica(t, etcd.Endpoint)

	if err := a.a.Add(" api.example.com "); err != nil {
		t.Fatal(err)
	}
	if got, _ := a.a.List(); !slices.Equal(got, []string{"api.example.com"}) {
		t.Errorf("on the replica that added it, at once: %q", got)
	}
	start := time.Now()
	b.eventually(t, time.Second, "api.example.com")
	t.Logf("propagation to the other replica: %s", time.Since(start))

	if err := b.a.Add("*.example.org"); err != nil {
		t.Fatal(err)
	}
	a.eventually(t, time.Second, "api.example.com", "*.example.org") // in the order added

	if err := b.a.Add("api.example.com"); !errors.Is(err, managed.ErrExists) {
		t.Errorf("adding a rule another replica added: %v; want ErrExists", err)
	}
	for _, bad := range []string{"*", "a.com\nb.com", "*.com", "https://x.example.com/"} {
		if err := a.a.Add(bad); !errors.Is(err, managed.ErrInvalid) {
			t.Errorf("Add(%q) = %v; want ErrInvalid", bad, err)
		}
	}

	// Both replicas add one rule at once: exactly one wins.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, r := range []*replica{a, b} {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = r.a.Add("race.example.net") }()
	}
	wg.Wait()
	if (errs[0] == nil) == (errs[1] == nil) {
		t.Errorf("two replicas adding one rule: %v and %v; want exactly one success", errs[0], errs[1])
	}

	if err := a.a.Remove("api.example.com"); err != nil {
		t.Fatal(err)
	}
	if err := b.a.Remove("api.example.com"); !errors.Is(err, managed.ErrNotFound) {
		t.Errorf("removing a removed rule: %v; want ErrNotFound", err)
	}
	b.eventually(t, time.Second, "*.example.org", "race.example.net")
}

// A replica whose watch was behind a compaction reads afresh: its cache is not
// left stale.
func TestAllowlistResyncsAfterCompaction(t *testing.T) {
	etcd := etcdtest.Start(t)
	a := newReplica(t, etcd.Endpoint)
	if err := a.a.Add("old.example.com"); err != nil {
		t.Fatal(err)
	}

	// b starts from a cache read at this revision, and its watch only later.
	ctx := context.Background()
	c, err := Connect(ctx, Config{Endpoints: []string{etcd.Endpoint}, Prefix: "/test/", DialTimeout: time.Second},
		slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, err := NewAllowlist(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.a.Remove("old.example.com"); err != nil {
		t.Fatal(err)
	}
	if err := a.a.Add("new.example.com"); err != nil {
		t.Fatal(err)
	}
	raw, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	resp, err := raw.Get(ctx, "any")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}

	changed := make(chan struct{}, 10)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); b.Run(rctx, func() { changed <- struct{}{} }) }()
	defer func() { cancel(); <-done }()
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("no change within 5s of a watch behind a compaction")
	}
	if got, _ := b.List(); !slices.Equal(got, []string{"new.example.com"}) {
		t.Errorf("after the compaction: %q; want [new.example.com]", got)
	}
}

func TestOutage(t *testing.T) {
	etcd := etcdtest.Start(t)
	a := newReplica(t, etcd.Endpoint)
	if err := a.a.Add("kept.example.com"); err != nil {
		t.Fatal(err)
	}
	etcd.Stop()

	err := a.a.Add("lost.example.com")
	if !errors.Is(err, managed.ErrUnconfirmed) {
		t.Fatalf("Add with etcd down: %v; want ErrUnconfirmed", err)
	}
	if err := a.a.Remove("kept.example.com"); !errors.Is(err, managed.ErrUnconfirmed) {
		t.Errorf("Remove with etcd down: %v; want ErrUnconfirmed", err)
	}
	if got, _ := a.a.List(); !slices.Equal(got, []string{"kept.example.com"}) {
		t.Errorf("the cache during the outage: %q", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(a.c.connected) != 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if v := testutil.ToFloat64(a.c.connected); v != 0 {
		t.Errorf("egressd_cluster_connected = %v during the outage; want 0", v)
	}
}

func TestConnectNamesTheEndpoints(t *testing.T) {
	_, err := Connect(context.Background(), Config{Endpoints: []string{"http://127.0.0.1:1"}, DialTimeout: 500 * time.Millisecond},
		slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err == nil || !strings.Contains(err.Error(), "http://127.0.0.1:1") {
		t.Fatalf("Connect to nothing: %v; want an error naming the endpoint", err)
	}
}
