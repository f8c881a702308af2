package scheduler

import "github.com/prometheus/client_golang/prometheus"

// metrics' labels are bounded: functions come from the functions file, schedules
// number at most max_schedules, and a deleted schedule's series are removed.
type metrics struct {
	invocations *prometheus.CounterVec // function, result
	lastRun     *prometheus.GaugeVec   // schedule
	lastSuccess *prometheus.GaugeVec   // schedule
	schedules   prometheus.Gauge
	reloads     *prometheus.CounterVec // result: success, failure
	lastReload  prometheus.Gauge
	missed      *prometheus.CounterVec // function
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		invocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "egressd_schedule_invocations_total",
			Help: "Scheduled invocations by function and result (success, failure, skipped).",
		}, []string{"function", "result"}),
		lastRun: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "egressd_schedule_last_run_timestamp_seconds",
			Help: "Unix time the schedule's last invocation started.",
		}, []string{"schedule"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "egressd_schedule_last_success",
			Help: "1 if the schedule's last invocation succeeded, 0 if it failed.",
		}, []string{"schedule"}),
		schedules: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "egressd_schedules",
			Help: "Schedules defined.",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "egressd_scheduler_functions_reloads_total",
			Help: "Loads of the functions file, by result (success, failure: the functions in force stay).",
		}, []string{"result"}),
		lastReload: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "egressd_scheduler_functions_last_reload_success",
			Help: "1 if the last load of the functions file succeeded, 0 if it failed.",
		}),
		missed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "egressd_schedule_missed_total",
			Help: "Scheduled runs skipped because no replica led in time (cluster mode: older than 30s at a takeover).",
		}, []string{"function"}),
	}
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	for _, c := range []prometheus.Collector{m.invocations, m.lastRun, m.lastSuccess, m.schedules, m.reloads, m.lastReload, m.missed} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) forget(id string) {
	m.lastRun.DeleteLabelValues(id)
	m.lastSuccess.DeleteLabelValues(id)
}
