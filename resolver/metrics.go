package resolver

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	queries   *prometheus.CounterVec // result
	duration  prometheus.Histogram
	cacheHits prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, r *Resolver) (*metrics, error) {
	m := &metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "egressd_dns_queries_total",
			Help: "DNS queries sent upstream, by result (success, nxdomain, nodata, servfail, timeout, error).",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "egressd_dns_query_duration_seconds",
			Help:    "Time to get an answer from the upstreams, retries included.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		cacheHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "egressd_dns_cache_hits_total",
			Help: "Look-ups answered from the cache.",
		}),
	}
	entries := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "egressd_dns_cache_entries",
		Help: "Answers in the DNS cache, negative ones included.",
	}, func() float64 { return float64(r.cacheLen()) })
	for _, c := range []prometheus.Collector{m.queries, m.duration, m.cacheHits, entries} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, res := range []string{"success", "nxdomain", "nodata", "servfail", "timeout", "error"} {
		m.queries.WithLabelValues(res)
	}
	return m, nil
}
