package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/egressd/egressd/scheduler"
)

// Schedules keeps the scheduler's state on etcd (a scheduler.Shared), under
// <prefix>schedules/:
//
//	definitions    every schedule and the deleted list, one JSON value written in
//	               transactions on its mod revision (so the limit holds across replicas)
//	state/<id>     a schedule's last run, written by the leader after each run
//	claims/<id>    the time of the latest run claimed, zero-padded Unix seconds
//	leader/        the election
//
// One replica leads, through a concurrency.Election on a lease of SessionTTL. It
// claims a run (a transaction that moves claims/<id> forward only while the
// election key is still its own) before invoking it, so each run is invoked at
// most once across leader changes; and it stops counting itself leader a margin
// before its lease can have expired on etcd's side.
type Schedules struct {
	cache *dirCache
	ttl   time.Duration
	name  string

	mu          sync.Mutex
	leaderKey   string
	leaderRev   int64
	leaderUntil time.Time
}

// NewSchedules reads the schedules from etcd; Run keeps them current and, if asked,
// campaigns. name identifies this replica in the election.
func NewSchedules(ctx context.Context, c *Cluster, ttl time.Duration, name string) (*Schedules, error) {
	d, err := newDirCache(ctx, c, "schedules/")
	if err != nil {
		return nil, fmt.Errorf("cluster: reading the schedules from etcd: %w", err)
	}
	return &Schedules{cache: d, ttl: ttl, name: name}, nil
}

const definitionsKey = "definitions"

// Cached is the definitions from the cache.
func (s *Schedules) Cached() scheduler.Definitions {
	e, ok := s.cache.snapshot()[s.cache.dir+definitionsKey]
	var d scheduler.Definitions
	if ok {
		if err := json.Unmarshal([]byte(e.value), &d); err != nil {
			s.cache.c.log.Error("the schedules in etcd do not decode; none are run", "key", s.cache.dir+definitionsKey, "error", err.Error())
		}
	}
	return d
}

// States is each schedule's last recorded state, from the cache.
func (s *Schedules) States() map[string]scheduler.State {
	out := map[string]scheduler.State{}
	for k, e := range s.cache.snapshot() {
		id, ok := strings.CutPrefix(k, s.cache.dir+"state/")
		if !ok {
			continue
		}
		var st scheduler.State
		if json.Unmarshal([]byte(e.value), &st) == nil {
			out[id] = st
		}
	}
	return out
}

// Fetch reads the definitions afresh.
func (s *Schedules) Fetch(ctx context.Context) (scheduler.Definitions, int64, error) {
	v, rev, err := s.cache.fetch(ctx, definitionsKey)
	var d scheduler.Definitions
	if err != nil || rev == 0 {
		return d, rev, err
	}
	if err := json.Unmarshal([]byte(v), &d); err != nil {
		return d, 0, fmt.Errorf("the schedules in etcd do not decode: %w", err)
	}
	return d, rev, nil
}

// Store writes the definitions if they are still at rev (0: absent).
func (s *Schedules) Store(ctx context.Context, d scheduler.Definitions, rev int64) (bool, error) {
	for i := range d.Schedules {
		d.Schedules[i].State = scheduler.State{} // a run's state lives in state/<id>
	}
	data, err := json.Marshal(d)
	if err != nil {
		return false, err
	}
	return s.cache.put(ctx, definitionsKey, string(data), rev)
}

// Record writes a schedule's state.
func (s *Schedules) Record(ctx context.Context, id string, st scheduler.State) error {
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	ctx, cancel := s.cache.c.request(ctx)
	defer cancel()
	_, err = s.cache.c.client.Put(ctx, s.cache.dir+"state/"+id, string(data))
	return err
}

func claimValue(t time.Time) string { return fmt.Sprintf("%020d", t.Unix()) }

// LastClaim reads the latest claimed run of id afresh.
func (s *Schedules) LastClaim(ctx context.Context, id string) (time.Time, error) {
	v, rev, err := s.cache.fetch(ctx, "claims/"+id)
	if err != nil || rev == 0 {
		return time.Time{}, err
	}
	n, err := strconv.ParseInt(v, 10, 64) // leading zeros parse
	if err != nil {
		return time.Time{}, fmt.Errorf("claims/%s holds %q", id, v)
	}
	return time.Unix(n, 0).UTC(), nil
}

// Claim moves claims/<id> to at, if it is before at and this replica's election
// key is still the leader's, in one transaction.
func (s *Schedules) Claim(ctx context.Context, id string, at time.Time) (bool, error) {
	s.mu.Lock()
	key, rev := s.leaderKey, s.leaderRev
	s.mu.Unlock()
	if key == "" || !s.Leading() {
		return false, nil
	}
	claim := s.cache.dir + "claims/" + id
	want := claimValue(at)
	for range 3 {
		v, mod, err := s.cache.fetch(ctx, "claims/"+id)
		if err != nil {
			return false, err
		}
		if mod != 0 && v >= want {
			return false, nil // claimed already, by this leader or an earlier one
		}
		rctx, cancel := s.cache.c.request(ctx)
		resp, err := s.cache.c.client.Txn(rctx).
			If(clientv3.Compare(clientv3.ModRevision(claim), "=", mod),
				clientv3.Compare(clientv3.CreateRevision(key), "=", rev)).
			Then(clientv3.OpPut(claim, want)).
			Commit()
		cancel()
		if err != nil {
			return false, err
		}
		if resp.Succeeded {
			return true, nil
		}
	}
	return false, nil
}

// Leading says whether this replica leads, with the margin.
func (s *Schedules) Leading() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leaderKey != "" && time.Now().Before(s.leaderUntil)
}

// Run follows etcd until ctx ends, calling changed after each change; with
// campaign, it also takes part in the election, calling lead each time this
// replica becomes the leader.
func (s *Schedules) Run(ctx context.Context, campaign bool, changed func(), lead func()) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.cache.Run(ctx, changed) }()
	if campaign {
		backoff := 100 * time.Millisecond
		for ctx.Err() == nil {
			if err := s.campaign(ctx, lead); err != nil && ctx.Err() == nil {
				s.cache.c.log.Warn("scheduler election: retrying", "error", err.Error())
				select {
				case <-ctx.Done():
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 2*time.Second)
				continue
			}
			backoff = 100 * time.Millisecond
		}
	}
	wg.Wait()
}

// campaign runs one term: a lease, the election, leadership until the lease is
// lost or ctx ends (then it resigns, so that another replica takes over at once).
func (s *Schedules) campaign(ctx context.Context, lead func()) error {
	c := s.cache.c
	ttl := max(int64(s.ttl/time.Second), 2)
	gctx, cancel := c.request(ctx)
	grant, err := c.client.Grant(gctx, ttl)
	cancel()
	if err != nil {
		return err
	}
	// The session keeps the lease alive; refresh below measures it, so that this
	// replica stops counting itself leader before etcd can have let it expire.
	session, err := concurrency.NewSession(c.client, concurrency.WithLease(grant.ID), concurrency.WithContext(ctx))
	if err != nil {
		return err
	}
	defer session.Close() // revokes the lease: the next leader need not wait for it
	election := concurrency.NewElection(session, c.prefix+"schedules/leader/")
	if err := election.Campaign(ctx, s.name); err != nil {
		return err
	}
	until, err := s.refresh(ctx, grant.ID, ttl)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.leaderKey, s.leaderRev, s.leaderUntil = election.Key(), election.Rev(), until
	s.mu.Unlock()
	c.log.Info("this replica leads the scheduler", "replica", s.name)
	defer func() {
		s.mu.Lock()
		s.leaderKey, s.leaderRev = "", 0
		s.mu.Unlock()
	}()
	lead()
	for {
		select {
		case <-ctx.Done():
			rctx, cancel := context.WithTimeout(context.Background(), time.Second)
			election.Resign(rctx)
			cancel()
			return nil
		case <-session.Done():
			c.log.Warn("scheduler leadership lost: the lease is gone", "replica", s.name)
			return nil
		case <-time.After(time.Duration(ttl) * time.Second / 3):
		}
		until, err := s.refresh(ctx, grant.ID, ttl)
		if err != nil {
			if time.Now().After(s.until()) {
				c.log.Warn("scheduler leadership given up: the lease could not be renewed in time", "replica", s.name, "error", err.Error())
				return nil
			}
			continue
		}
		s.mu.Lock()
		s.leaderUntil = until
		s.mu.Unlock()
	}
}

func (s *Schedules) until() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leaderUntil
}

// refresh renews the lease once and returns until when this replica may count
// itself leader: etcd renewed the lease after the request was sent, so it cannot
// expire before sent+TTL; the margin (a third of it) covers clocks and the run
// about to start.
func (s *Schedules) refresh(ctx context.Context, id clientv3.LeaseID, ttl int64) (time.Time, error) {
	sent := time.Now()
	rctx, cancel := s.cache.c.request(ctx)
	defer cancel()
	if _, err := s.cache.c.client.KeepAliveOnce(rctx, id); err != nil {
		return time.Time{}, err
	}
	d := time.Duration(ttl) * time.Second
	return sent.Add(d - d/3), nil
}
