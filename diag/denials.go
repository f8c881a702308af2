package diag

import (
	"container/list"
	"sync"
	"time"
)

// DefaultDenialTargets is how many distinct targets a Denials table keeps.
const DefaultDenialTargets = 1000

// Denial is what the table knows about one denied target.
type Denial struct {
	Target     string    `json:"target"` // host:port
	Count      int64     `json:"count"`
	FirstSeen  time.Time `json:"first_seen"`
	LastSeen   time.Time `json:"last_seen"`
	LastReason string    `json:"last_reason"`
	LastHint   string    `json:"last_hint"`
	// Rule is the rule that would allow the target, when a rule can: what the
	// console's "allow" button adds.
	Rule       string `json:"rule,omitempty"`
	LastClient string `json:"last_client"`
	ReportOnly bool   `json:"report_only"` // denied in report mode: let through
}

// Denials is a bounded table of the most recently denied targets. The proxy writes to
// it only on the deny path, under a mutex; allowed requests never touch it.
type Denials struct {
	mu    sync.Mutex
	max   int
	order *list.List // of *Denial, most recent first
	by    map[string]*list.Element
}

// NewDenials returns a table that keeps at most max targets (DefaultDenialTargets if
// max is zero or less), dropping the least recently denied.
func NewDenials(max int) *Denials {
	if max <= 0 {
		max = DefaultDenialTargets
	}
	return &Denials{max: max, order: list.New(), by: map[string]*list.Element{}}
}

// Record notes one denial of target; rule is the rule that would allow it, or "".
func (t *Denials) Record(target, reason, hint, rule, client string, reportOnly bool, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.by[target]; e != nil {
		d := e.Value.(*Denial)
		d.Count++
		d.LastSeen, d.LastReason, d.LastHint, d.Rule, d.LastClient, d.ReportOnly = at, reason, hint, rule, client, reportOnly
		t.order.MoveToFront(e)
		return
	}
	d := &Denial{Target: target, Count: 1, FirstSeen: at, LastSeen: at, LastReason: reason, LastHint: hint, Rule: rule, LastClient: client, ReportOnly: reportOnly}
	t.by[target] = t.order.PushFront(d)
	for t.order.Len() > t.max {
		last := t.order.Back()
		delete(t.by, last.Value.(*Denial).Target)
		t.order.Remove(last)
	}
}

// Recent returns up to limit denials, most recent first (all of them if limit <= 0).
// The values are copies.
func (t *Denials) Recent(limit int) []Denial {
	t.mu.Lock()
	defer t.mu.Unlock()
	if limit <= 0 || limit > t.order.Len() {
		limit = t.order.Len()
	}
	out := make([]Denial, 0, limit)
	for e := t.order.Front(); e != nil && len(out) < limit; e = e.Next() {
		out = append(out, *e.Value.(*Denial))
	}
	return out
}
