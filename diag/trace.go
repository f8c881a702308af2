package diag

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/egressd/egressd/dialer"
	"github.com/egressd/egressd/policy"
)

// DefaultMaxHops is how many requests a trace makes at most.
const DefaultMaxHops = 10

// Tracer follows redirect chains. Its zero value is not usable: set Policy and Dial.
type Tracer struct {
	// Policy returns the policy each hop is checked against.
	Policy func() *policy.Matcher
	// Dial connects, under the private-address guard (a dialer.Dialer's DialContext).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// MaxHops bounds the chain. If zero, DefaultMaxHops.
	MaxHops int
	// HopTimeout bounds each request. If zero, 10s.
	HopTimeout time.Duration
	// FollowDenied fetches hops that the policy denies too. Without it a trace stops
	// at the first denied hop and says so: a trace contacts only what the proxy would.
	FollowDenied bool
}

// Hop is one request of a trace.
type Hop struct {
	URL      string `json:"url"`
	Method   string `json:"method"`
	Target   string `json:"target"` // host:port
	Allowed  bool   `json:"allowed"`
	Rule     string `json:"rule,omitempty"`    // the rule that allows the target
	RuleAt   string `json:"rule_at,omitempty"` // its file:line
	Reason   string `json:"reason,omitempty"`  // why the target is denied
	Hint     string `json:"hint,omitempty"`
	Status   int    `json:"status,omitempty"` // the answer's status code
	Location string `json:"location,omitempty"`
	Error    string `json:"error,omitempty"` // the request failed, or was not made

	suggest string // the rule that would let this hop through
}

// Trace is a followed redirect chain.
type Trace struct {
	URL  string `json:"url"`
	Hops []Hop  `json:"hops"`
	// End says how the chain ended: "answer" (a response that is not a redirect),
	// "denied" (a hop the policy denies, not fetched), "error", "loop" or "too many
	// hops".
	End string `json:"end"`
	// Allowed is true when every hop is allowed and the chain ends in an answer.
	Allowed bool `json:"allowed"`
	// Add lists the rules that would let every hop through, in chain order.
	Add []string `json:"add"`
}

// Trace follows rawURL. The error is for a URL that cannot be traced at all; what
// happens along the chain is in the Trace.
func (t *Tracer) Trace(ctx context.Context, rawURL string) (*Trace, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%q is not an http:// or https:// URL", rawURL)
	}
	maxHops := t.MaxHops
	if maxHops <= 0 {
		maxHops = DefaultMaxHops
	}
	hopTimeout := t.HopTimeout
	if hopTimeout <= 0 {
		hopTimeout = 10 * time.Second
	}
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         t.Dial,
		TLSHandshakeTimeout: hopTimeout,
		DisableKeepAlives:   true,
		DisableCompression:  true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport:     tr,
		Timeout:       hopTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}

	res := &Trace{URL: u.String(), Add: []string{}}
	seen := map[string]bool{}
	m := t.Policy()
	for len(res.Hops) < maxHops {
		if seen[u.String()] {
			res.End = "loop"
			return res.finish(), nil
		}
		seen[u.String()] = true
		hop := t.check(m, u)
		if !hop.Allowed && hop.Error == "" && !t.FollowDenied {
			hop.Error = "not fetched: the policy denies it; to see where it leads, trace with --follow-denied " +
				"(follow_denied=true on /v1/trace), which fetches denied hops"
			res.Hops = append(res.Hops, hop)
			res.End = "denied"
			return res.finish(), nil
		}
		next, end := t.fetch(ctx, client, u, &hop)
		res.Hops = append(res.Hops, hop)
		if end != "" {
			res.End = end
			return res.finish(), nil
		}
		u = next
	}
	res.End = "too many hops"
	return res.finish(), nil
}

// check records the policy's verdict on u's target in a new hop.
func (t *Tracer) check(m *policy.Matcher, u *url.URL) Hop {
	hop := Hop{URL: u.String()}
	host, port, err := policy.URLTarget(u)
	if err != nil {
		hop.Error = err.Error()
		return hop
	}
	d := m.Decide(host, port)
	hop.Target = d.Target()
	hop.Allowed = d.Allow
	if d.Allow {
		hop.Rule, hop.RuleAt = d.Rule.Text, d.Rule.Location()
	} else {
		hop.Reason, hop.Hint = string(d.Reason), d.Hint()
		hop.suggest = d.SuggestedRule()
	}
	return hop
}

// fetch requests u with HEAD (GET where HEAD is refused) and returns the next URL,
// or how the chain ends.
func (t *Tracer) fetch(ctx context.Context, client *http.Client, u *url.URL, hop *Hop) (next *url.URL, end string) {
	if hop.Error != "" {
		return nil, "error"
	}
	var resp *http.Response
	var err error
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		hop.Method = method
		resp, err = do(ctx, client, method, u)
		if err != nil || (resp.StatusCode != http.StatusMethodNotAllowed && resp.StatusCode != http.StatusNotImplemented) {
			break
		}
	}
	if err != nil {
		if de, ok := dialer.Refusal(err); ok {
			// The guard refused every address: reported, never fetched.
			hop.Allowed, hop.Rule, hop.RuleAt = false, "", ""
			hop.Reason, hop.Hint = de.Reason, de.Hint()
			hop.Error = "not fetched: " + de.Hint()
			if a, ok := de.RefusedAddr(); ok {
				hop.suggest = netip.PrefixFrom(a, a.BitLen()).String()
			}
		} else {
			hop.Error = err.Error()
		}
		return nil, "error"
	}
	hop.Status = resp.StatusCode
	loc := resp.Header.Get("Location")
	if !isRedirect(resp.StatusCode) || loc == "" {
		return nil, "answer"
	}
	next, err = u.Parse(loc) // resolves relative Locations against this hop
	if err != nil {
		hop.Error = "invalid Location " + strconv.Quote(loc)
		return nil, "error"
	}
	hop.Location = next.String()
	return next, ""
}

func do(ctx context.Context, client *http.Client, method string, u *url.URL) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "egressd-trace")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	return resp, nil
}

func isRedirect(code int) bool {
	switch code {
	case 301, 302, 303, 307, 308:
		return true
	}
	return false
}

// finish fills Allowed and Add from the hops.
func (res *Trace) finish() *Trace {
	res.Allowed = res.End == "answer"
	for _, h := range res.Hops {
		if !h.Allowed {
			res.Allowed = false
		}
		if h.suggest != "" && !slices.Contains(res.Add, h.suggest) {
			res.Add = append(res.Add, h.suggest)
		}
	}
	return res
}
