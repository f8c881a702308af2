package originate

import (
	"github.com/prometheus/client_golang/prometheus"
)

// expiryCollector reports, at each scrape, when the client certificate of every
// entry that has one expires.
type expiryCollector struct {
	o     *Originator
	table func() *Table
	desc  *prometheus.Desc
}

// Register registers egressd_client_certificate_expiry_seconds on reg for the
// entries of the table in force: the Unix time each entry's client certificate
// expires, labelled with the entry's host (a configured name, so a bounded set).
func (o *Originator) Register(reg prometheus.Registerer, table func() *Table) error {
	return reg.Register(&expiryCollector{o: o, table: table, desc: prometheus.NewDesc(
		"egressd_client_certificate_expiry_seconds",
		"Unix time at which the client certificate of an upstreams entry expires (alert well before).",
		[]string{"upstream"}, nil)})
}

func (c *expiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *expiryCollector) Collect(ch chan<- prometheus.Metric) {
	for _, e := range c.table().Entries() {
		if t, ok := c.o.ExpiryOf(e); ok {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(t.Unix()), e.Name())
		}
	}
}
