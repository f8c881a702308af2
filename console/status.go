package console

import (
	"context"
	"sync"
	"time"
)

// Status is what the overview shows of the running egressd beside what the API
// says: its mode, its counts so far, and in cluster mode etcd and the scheduler.
type Status struct {
	Mode             string
	Allowed, Denied  int64 // requests since start
	TunnelsOpen      int64
	Cluster          bool   // cluster mode
	ClusterConnected bool   // etcd answers
	Scheduler        string // who invokes schedules, in words; empty without a scheduler
}

// sample is the counts at one moment, for "in the last hour".
type sample struct {
	at              time.Time
	allowed, denied int64
}

// counts keeps a sample a minute for the last hour.
type counts struct {
	mu      sync.Mutex
	samples []sample // oldest first, at most 61
}

func (c *counts) add(s sample) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.samples = append(c.samples, s)
	cut := 0
	for cut < len(c.samples)-1 && s.at.Sub(c.samples[cut+1].at) >= time.Hour {
		cut++
	}
	c.samples = c.samples[cut:]
}

// lastHour is now's counts less those of the oldest sample within the hour (or
// the first one: egressd started less than an hour ago, and its counts start at 0).
func (c *counts) lastHour(now sample) (allowed, denied int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	base := sample{}
	for _, s := range c.samples {
		if now.at.Sub(s.at) <= time.Hour {
			base = s
			break
		}
	}
	return now.allowed - base.allowed, now.denied - base.denied
}

// Run samples the counts every minute until ctx ends, for the overview's hour.
func (c *Console) Run(ctx context.Context) {
	if c.opts.Status == nil {
		return
	}
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		st := c.opts.Status()
		c.counts.add(sample{c.opts.Now(), st.Allowed, st.Denied})
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *Console) status(data map[string]any) {
	if c.opts.Status == nil {
		return
	}
	st := c.opts.Status()
	allowed, denied := c.counts.lastHour(sample{c.opts.Now(), st.Allowed, st.Denied})
	data["Status"], data["AllowedHour"], data["DeniedHour"] = st, allowed, denied
}
