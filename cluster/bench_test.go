package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/etcdtest"
	"github.com/egressd/egressd/secrets"
)

// Run with: go test ./cluster -run '^$' -bench . -benchtime 2000x
// Figures are percentiles of the iterations, reported as custom metrics.

func reportPercentiles(b *testing.B, unit string, scale time.Duration, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	b.ReportMetric(float64(d[len(d)/2])/float64(scale), "p50-"+unit)
	b.ReportMetric(float64(d[len(d)*99/100])/float64(scale), "p99-"+unit)
}

// BenchmarkSecretRead: a function's GET of one secret through the runtime API
// (HTTP on loopback), warm cache, from the file store and from etcd side by side.
func BenchmarkSecretRead(b *testing.B) {
	key, _ := secrets.GenerateKey()
	file := filepath.Join(b.TempDir(), "secrets.enc")
	if err := secrets.Create(file, key, map[string]string{"token": strings.Repeat("x", 512)}, time.Now()); err != nil {
		b.Fatal(err)
	}
	fileStore, err := secrets.Open(secrets.Options{File: file, Key: key})
	if err != nil {
		b.Fatal(err)
	}
	etcd := etcdtest.Start(b)
	r := newReplica(b, etcd.Endpoint)
	shared := secretsReplica(b, r, key)
	if _, err := shared.Create(context.Background(), "token", strings.Repeat("x", 512)); err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name  string
		store *secrets.Store
	}{{"file", fileStore}, {"etcd", shared}} {
		b.Run(bc.name, func(b *testing.B) {
			srv := httptest.NewServer(secrets.RuntimeHandler(bc.store, "", nil))
			defer srv.Close()
			client := srv.Client()
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				resp, err := client.Get(srv.URL + "/v1/secrets/token")
				if err != nil || resp.StatusCode != 200 {
					b.Fatalf("GET: %v %v", resp, err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				lat = append(lat, time.Since(start))
			}
			reportPercentiles(b, "us", time.Microsecond, lat)
		})
	}
}

// BenchmarkSecretUpdateContended: three replicas on a three-member etcd cluster
// update one secret with If-Match as fast as they can; updates/s is the rate of
// successful updates, conflicts/op the share answered 412.
func BenchmarkSecretUpdateContended(b *testing.B) {
	key, _ := secrets.GenerateKey()
	etcd := etcdtest.StartCluster(b, 3)
	var stores []*secrets.Store
	for i := range 3 {
		stores = append(stores, secretsReplica(b, newReplica(b, etcd.Endpoints[i]), key))
	}
	ctx := context.Background()
	if _, err := stores[0].Create(ctx, "token", "0"); err != nil {
		b.Fatal(err)
	}
	var next, ok, conflicts atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for _, s := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				sec, err := s.Get("token")
				if err != nil {
					b.Error(err)
					return
				}
				_, err = s.Update(ctx, "token", strconv.FormatInt(sec.Version, 10), sec.Version)
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, secrets.ErrConflict):
					conflicts.Add(1)
				default:
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(ok.Load())/time.Since(start).Seconds(), "updates/s")
	b.ReportMetric(float64(conflicts.Load())/float64(b.N), "conflicts/op")
}

// BenchmarkPropagation: the time from a change acknowledged on one replica to the
// moment the two others serve it, on a three-member etcd cluster.
func BenchmarkPropagation(b *testing.B) {
	key, _ := secrets.GenerateKey()
	etcd := etcdtest.StartCluster(b, 3)
	var replicas []*replica
	var stores []*secrets.Store
	for i := range 3 {
		r := newReplica(b, etcd.Endpoints[i])
		replicas = append(replicas, r)
		stores = append(stores, secretsReplica(b, r, key))
	}
	ctx := context.Background()
	if _, err := stores[0].Create(ctx, "token", "0"); err != nil {
		b.Fatal(err)
	}
	waitAll := func(seen func(i int) bool) time.Duration {
		start := time.Now()
		for i := 1; i < 3; i++ {
			for !seen(i) {
				if time.Since(start) > 5*time.Second {
					b.Fatalf("replica %d never saw the change", i)
				}
				time.Sleep(50 * time.Microsecond)
			}
		}
		return time.Since(start)
	}
	b.Run("secret", func(b *testing.B) {
		lat := make([]time.Duration, 0, b.N)
		for range b.N {
			v, err := stores[0].Update(ctx, "token", "v", 0)
			if err != nil {
				b.Fatal(err)
			}
			lat = append(lat, waitAll(func(i int) bool { s, _ := stores[i].Get("token"); return s.Version >= v }))
		}
		reportPercentiles(b, "us", time.Microsecond, lat)
	})
	b.Run("rule", func(b *testing.B) {
		lat := make([]time.Duration, 0, b.N)
		for n := range b.N {
			rule := fmt.Sprintf("r%d.example.com", n)
			if err := replicas[0].a.Add(rule); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, waitAll(func(i int) bool { rules, _ := replicas[i].a.List(); return slices.Contains(rules, rule) }))
			replicas[0].a.Remove(rule)
		}
		reportPercentiles(b, "us", time.Microsecond, lat)
	})
}

// BenchmarkSchedulerFailover: the time from the leader's connection being cut (as
// by kill -9: no resignation) to another replica leading, session_ttl 2s. Run it
// on its own, with few iterations: -bench SchedulerFailover -benchtime 5x.
func BenchmarkSchedulerFailover(b *testing.B) {
	etcd := etcdtest.Start(b)
	clock := &manualClock{now: time.Now()}
	inv := &runs{n: map[string]int{}}
	var live []*schedReplica
	for i := range 3 {
		live = append(live, startSchedReplica(b, etcd.Endpoint, i, clock, inv))
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for n := range b.N {
		old, _ := leader(b, live, 10*time.Second)
		old.c.Close()
		cut := time.Now()
		live = slices.DeleteFunc(live, func(r *schedReplica) bool { return r == old })
		leader(b, live, 10*time.Second)
		lat = append(lat, time.Since(cut))
		live = append(live, startSchedReplica(b, etcd.Endpoint, 3+n, clock, inv))
	}
	reportPercentiles(b, "ms", time.Millisecond, lat)
}
