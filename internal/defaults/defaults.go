// Package defaults holds every default value of egressd in one place: the config
// package fills a config's zero values from it, and each constructor documents and
// applies the same value for a zero option, so that the two never disagree.
package defaults

import "time"

// The Go runtime: how many CPUs run egressd's Go code at once (GOMAXPROCS), and
// how far the heap grows past what is live before a collection (GOGC).
const (
	Processors = 1
	GCPercent  = 400
)

// The proxy.
const (
	ProxyListen            = "127.0.0.1:3128"
	ReadHeaderTimeout      = 10 * time.Second
	IdleTimeout            = 5 * time.Minute
	DialTimeout            = 10 * time.Second
	MaxHeaderBytes         = 64 << 10
	MaxResponseHeaderBytes = 1 << 20
	ResponseHeaderTimeout  = 60 * time.Second
	HalfCloseTimeout       = 30 * time.Second
	MaxConnections         = 4096
	DrainTimeout           = 30 * time.Second
)

// AllowedPorts are the ports a rule without a port allows.
func AllowedPorts() []int { return []int{80, 443} }

// Listeners other than the proxy's.
const (
	MetricsListen = "127.0.0.1:9090"
	AdminListen   = "127.0.0.1:9091"
)

// DNS.
const (
	DNSTimeout    = 2 * time.Second
	DNSAttempts   = 2
	DNSMaxTTL     = 5 * time.Minute
	DNSCacheSize  = 10000
	ResolvConf    = "/etc/resolv.conf"
	HostsFile     = "/etc/hosts"
	DNSListenTTL  = 30 * time.Second // the TTL of the DNS listener's answers
	DNSListenWait = 5 * time.Second  // how long the DNS listener resolves one query
)

// Diagnostics, secrets and schedules.
const (
	DenialTargets      = 1000
	SecretsLockTimeout = 5 * time.Second
	MaxSchedules       = 10
	InvokeTimeout      = 30 * time.Second
)

// Cluster mode.
const (
	EtcdPrefix      = "/egressd/"
	EtcdDialTimeout = 5 * time.Second
	EtcdSessionTTL  = 10 * time.Second
)

// The console.
const ConsoleSessionTTL = 8 * time.Hour
