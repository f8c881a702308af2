package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// metrics are the proxy's Prometheus metrics. Label values come from closed sets
// (kinds, decisions, fixed reason words): never host names or client addresses.
type metrics struct {
	requests       *prometheus.CounterVec   // kind, decision
	duration       *prometheus.HistogramVec // kind
	tunnelsActive  prometheus.Gauge
	tunnelBytes    *prometheus.CounterVec // direction
	upstreamErrors *prometheus.CounterVec // reason
	tunnelsClosed  *prometheus.CounterVec // reason
	acceptErrors   prometheus.Counter

	// The children the request path uses, resolved once: WithLabelValues hashes the
	// values and takes the vector's lock on every call.
	requestsBy map[string]map[string]prometheus.Counter // kind -> decision
	durationBy map[string]prometheus.Observer           // kind
	bytesUp    prometheus.Counter
	bytesDown  prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "egressd_requests_total",
			Help: "Proxy requests by kind (http, connect, transparent) and decision (allow, deny, report: denied but let through in report mode).",
		}, []string{"kind", "decision"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "egressd_request_duration_seconds",
			Help:    "Time to serve a plain HTTP request, or to decide and establish a CONNECT or intercepted tunnel.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"kind"}),
		tunnelsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "egressd_tunnels_active",
			Help: "CONNECT tunnels open now.",
		}),
		tunnelBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "egressd_tunnel_bytes_total",
			Help: "Bytes moved through CONNECT tunnels, counted when each direction ends: upstream is client to origin, downstream origin to client.",
		}, []string{"direction"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "egressd_upstream_errors_total",
			Help: "Failures to reach an allowed upstream, by reason (refused, timeout, dns, other).",
		}, []string{"reason"}),
		tunnelsClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "egressd_tunnels_closed_total",
			Help: "CONNECT tunnels closed, by reason (done, idle, revoked, shutdown, half_closed).",
		}, []string{"reason"}),
		acceptErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "egressd_accept_errors_total",
			Help: "Failures to accept a client connection on the proxy listener (out of file descriptors, mostly).",
		}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.tunnelsActive, m.tunnelBytes, m.upstreamErrors, m.tunnelsClosed, m.acceptErrors} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Resolve the label sets we know, which also makes their series exist from the
	// first scrape.
	m.requestsBy = map[string]map[string]prometheus.Counter{}
	m.durationBy = map[string]prometheus.Observer{}
	for _, k := range []string{kindHTTP, kindConnect, kindTransparent} {
		m.requestsBy[k] = map[string]prometheus.Counter{}
		for _, d := range []string{decisionAllow, decisionDeny, decisionReport} {
			m.requestsBy[k][d] = m.requests.WithLabelValues(k, d)
		}
		m.durationBy[k] = m.duration.WithLabelValues(k)
	}
	m.bytesUp = m.tunnelBytes.WithLabelValues("upstream")
	m.bytesDown = m.tunnelBytes.WithLabelValues("downstream")
	for _, r := range []string{"refused", "timeout", "dns", "other"} {
		m.upstreamErrors.WithLabelValues(r)
	}
	return m, nil
}

const (
	kindHTTP        = "http"
	kindConnect     = "connect"
	kindTransparent = "transparent" // a connection the interception rules redirected

	decisionAllow  = "allow"
	decisionDeny   = "deny"
	decisionReport = "report"
)

// Stats are the proxy's counts since it started, for the console's overview.
type Stats struct {
	Allowed, Denied, TunnelsOpen int64
}

// Stats reads the request counters (denied includes report mode's would-deny) and
// the tunnels open now.
func (p *Proxy) Stats() Stats {
	var s Stats
	m := p.metrics
	for _, byDecision := range m.requestsBy {
		s.Allowed += counterValue(byDecision[decisionAllow])
		s.Denied += counterValue(byDecision[decisionDeny]) + counterValue(byDecision[decisionReport])
	}
	var g dto.Metric
	if m.tunnelsActive.Write(&g) == nil {
		s.TunnelsOpen = int64(g.GetGauge().GetValue())
	}
	return s
}

func counterValue(c prometheus.Counter) int64 {
	var d dto.Metric
	if c.Write(&d) != nil {
		return 0
	}
	return int64(d.GetCounter().GetValue())
}
