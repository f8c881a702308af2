package reload

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	rules       prometheus.Gauge
	reloads     *prometheus.CounterVec // result
	lastSuccess prometheus.Gauge
	lastTime    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		rules: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "egressd_policy_rules",
			Help: "Rules in the policy in force.",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "egressd_policy_reloads_total",
			Help: "Allowlist loads, the first one included, by result (success, failure).",
		}, []string{"result"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "egressd_policy_last_reload_success",
			Help: "1 if the last allowlist load succeeded, 0 if it failed and an older policy is in force.",
		}),
		lastTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "egressd_policy_last_reload_timestamp_seconds",
			Help: "Unix time of the last allowlist load, successful or not.",
		}),
	}
	for _, c := range []prometheus.Collector{m.rules, m.reloads, m.lastSuccess, m.lastTime} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	return m, nil
}
