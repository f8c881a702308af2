package secrets

import "github.com/prometheus/client_golang/prometheus"

func newMetrics(reg prometheus.Registerer, s *Store) (*prometheus.CounterVec, error) {
	ops := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "egressd_secrets_operations_total",
		Help: "Secret store operations, by op (get, update, create, delete, list, rotate) and result (ok, not_found, exists, conflict, invalid, unauthorized, error).",
	}, []string{"op", "result"})
	count := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "egressd_secrets",
		Help: "Secrets in the store.",
	}, func() float64 { return float64(s.Len()) })
	for _, c := range []prometheus.Collector{ops, count} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, op := range []string{"get", "update", "create", "delete", "list"} {
		ops.WithLabelValues(op, "ok")
	}
	return ops, nil
}
