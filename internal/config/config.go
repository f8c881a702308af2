// Package config reads egressd's YAML configuration file.
//
// Decoding is strict: an unknown key, a value of the wrong type and a value out of
// range are each an error naming file:line. Defaults live in one place (applyDefaults)
// and are applied before validation, so the rest of egressd sees a complete Config.
// The package reads the file and nothing it names: allowlists are the policy package's.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/egressd/egressd/internal/defaults"
	"github.com/egressd/egressd/originate"

	"gopkg.in/yaml.v3"
)

// Mode says what a denial does.
type Mode string

const (
	// ModeEnforce refuses denied requests. It is the default.
	ModeEnforce Mode = "enforce"
	// ModeReport logs and counts denied requests as "would deny" and lets them through,
	// for rolling out an allowlist safely.
	ModeReport Mode = "report"
)

// Config is the whole configuration file.
type Config struct {
	// Mode is "enforce" or "report". If empty, "enforce" is used.
	Mode Mode `yaml:"mode"`
	// Processors is how many CPUs run egressd's Go code at once (GOMAXPROCS). If
	// zero: GOMAXPROCS from the environment if it is set, else 1. One function's
	// traffic fits in one CPU, and one processor saves the Go scheduler's hand-offs
	// of work between threads (see the README's Benchmarks).
	Processors int `yaml:"processors"`
	// GCPercent is how far the heap grows past what is live before the next
	// collection (GOGC). If zero: GOGC from the environment if it is set, else 400.
	// egressd's live heap is a few MB, so the runtime's own 100 collects every few MB
	// allocated; 400 collects a quarter as often, for a few MB more under load.
	GCPercent int `yaml:"gc_percent"`
	// Proxy configures the forward proxy listener.
	Proxy Proxy `yaml:"proxy"`
	// Metrics configures the listener that serves /metrics, /healthz and /readyz.
	Metrics Metrics `yaml:"metrics"`
	// Allowlist lists allowlist files and directories. Relative paths are relative to
	// the config file's directory. It must not be empty.
	Allowlist []string `yaml:"allowlist"`
	// DNS configures egressd's resolver, the private-address guard and the optional
	// DNS listener.
	DNS DNS `yaml:"dns"`
	// ManagedAllowlist is where the rules managed through the admin API live in
	// single-node mode. Without it (and without a cluster) there are none.
	ManagedAllowlist ManagedAllowlist `yaml:"managed_allowlist"`
	// Cluster, if set, puts the state the replicas share in etcd. Without it
	// egressd keeps its state in local files, as a single pod.
	Cluster Cluster `yaml:"cluster"`
	// Upstreams are the hosts whose TLS egressd makes itself, with a client
	// certificate from the secret store, and the headers it injects for them. They
	// are reloaded when the config file changes; other keys need a restart.
	Upstreams []Upstream `yaml:"upstreams"`
	// Admin configures the authenticated admin API.
	Admin Admin `yaml:"admin"`
	// Secrets configures the encrypted secret store.
	Secrets Secrets `yaml:"secrets"`
	// Scheduler configures the cron schedule runner.
	Scheduler Scheduler `yaml:"scheduler"`
	// Log configures the process log on stderr.
	Log Log `yaml:"log"`

	// File is the path the config was read from; it is not a YAML key.
	File string `yaml:"-"`
	// Builtin is set for the configuration built into the binary.
	Builtin bool `yaml:"-"`
}

// Proxy configures the forward proxy.
type Proxy struct {
	// Listen is the proxy's host:port. If empty, 127.0.0.1:3128 is used.
	Listen string `yaml:"listen"`
	// AllowedPorts are the ports a rule without a port allows. If empty, 80 and 443.
	AllowedPorts []int `yaml:"allowed_ports"`
	// ReadHeaderTimeout bounds reading a request's headers. If zero, 10s is used.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	// IdleTimeout closes a keep-alive connection, or a tunnel with no bytes in either
	// direction, after this long. If zero, 5m is used.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// DialTimeout bounds connecting to an upstream. If zero, 10s is used.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// MaxHeaderBytes bounds a request's header size. If zero, 64 KiB is used.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// MaxResponseHeaderBytes bounds an origin's answer headers (each interim 1xx
	// answer's and the final one's); past it the client gets 502. If zero, 1 MiB.
	MaxResponseHeaderBytes int64 `yaml:"max_response_header_bytes"`
	// ResponseHeaderTimeout bounds the wait for an origin's answer headers once the
	// request has been sent; past it the client gets 504. If zero, 60s is used.
	ResponseHeaderTimeout time.Duration `yaml:"response_header_timeout"`
	// MaxConnections bounds concurrent client connections. If zero, 4096 is used.
	MaxConnections int `yaml:"max_connections"`
	// TransparentListen, if set, is the transparent listener's host:port (on
	// loopback, such as 127.0.0.1:15001): connections that egressd netns-setup's
	// rules redirect there are decided by their TLS SNI or HTTP Host. If empty, off.
	TransparentListen string `yaml:"transparent_listen"`
	// TransparentVerifyDestination refuses an intercepted connection whose original
	// address is not among its name's answers, instead of dialling the name's own.
	TransparentVerifyDestination bool `yaml:"transparent_verify_destination"`
	// TransparentDropOther makes egressd netns-setup drop the function's other UDP
	// and ICMP, which egressd cannot decide. If unset, true.
	TransparentDropOther *bool `yaml:"transparent_drop_other"`
	// UpstreamCAFile, if set, holds PEM roots trusted beside the system roots for
	// https:// requests in absolute form to hosts with no upstreams entry.
	UpstreamCAFile string `yaml:"upstream_ca_file"`
	// HalfCloseTimeout closes a tunnel whose client has ended its direction while the
	// origin keeps the other open for this long. If zero, 30s is used.
	HalfCloseTimeout time.Duration `yaml:"half_close_timeout"`
	// DrainTimeout is how long a shutdown lets requests and tunnels in flight finish
	// before closing them. If zero, 30s is used.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// CloseRevokedTunnels closes an open tunnel when a reload removes the rule that
	// allowed it. If unset, true.
	CloseRevokedTunnels *bool `yaml:"close_revoked_tunnels"`
}

// ManagedAllowlist configures the managed rules' file.
type ManagedAllowlist struct {
	// File holds the managed rules, one a line; egressd writes it durably and
	// watches it. It is created on the first rule added.
	File string `yaml:"file"`
}

// Cluster configures cluster mode.
type Cluster struct {
	Etcd Etcd `yaml:"etcd"`
}

// Etcd is how egressd reaches etcd in cluster mode.
type Etcd struct {
	// Endpoints are etcd's client URLs (https://etcd-0.etcd:2379). Cluster mode is
	// on when there is at least one.
	Endpoints []string `yaml:"endpoints"`
	// Prefix is where everything egressd writes lives. If empty, /egressd/.
	Prefix string  `yaml:"prefix"`
	TLS    EtcdTLS `yaml:"tls"`
	// Username, with PasswordFile, authenticates to etcd's own auth.
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
	// DialTimeout bounds connecting, and each request. If zero, 5s.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// SessionTTL is the scheduler leader's lease. If zero, 10s.
	SessionTTL time.Duration `yaml:"session_ttl"`
}

// EtcdTLS is the TLS between egressd and etcd; empty files mean none.
type EtcdTLS struct {
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// SecretsShared says whether the secret store is on etcd: in cluster mode, with
// secrets.key_file set.
func (c *Config) SecretsShared() bool {
	return c.Cluster.Etcd.Enabled() && c.Secrets.KeyFile != ""
}

// SecretsOn says whether there is a secret store, in a file or on etcd.
func (c *Config) SecretsOn() bool { return c.Secrets.File != "" || c.SecretsShared() }

// Enabled says whether cluster mode is on.
func (e Etcd) Enabled() bool { return len(e.Endpoints) > 0 }

// Upstream is one upstreams entry.
type Upstream struct {
	// Host is an exact host, or *.example.com with the allowlist's wildcard rules.
	Host string `yaml:"host"`
	// Port is where egressd connects. If zero, 443.
	Port int         `yaml:"port"`
	TLS  UpstreamTLS `yaml:"tls"`
	// InjectHeaders are set on every request to the host, replacing the function's;
	// a value may hold ${secret:NAME}.
	InjectHeaders map[string]string `yaml:"inject_headers"`
}

// UpstreamTLS is an upstreams entry's TLS; every field may be left out.
type UpstreamTLS struct {
	// ClientCertificate and ClientKey name the secrets with the PEM certificate chain
	// and its key (one secret holding both may be named twice).
	ClientCertificate string `yaml:"client_certificate"`
	ClientKey         string `yaml:"client_key"`
	// CA is a secret, or a file path (with a '/'), holding PEM roots. If empty, the
	// system roots (and proxy.upstream_ca_file).
	CA string `yaml:"ca"`
	// ServerName is the SNI and verification name. If empty, the host.
	ServerName string `yaml:"server_name"`
	// MinVersion is 1.2 or 1.3. If empty, 1.2.
	MinVersion string `yaml:"min_version"`
}

// UpstreamSpecs returns the upstreams entries as originate compiles them.
func (c *Config) UpstreamSpecs() []originate.Spec {
	specs := make([]originate.Spec, len(c.Upstreams))
	for i, u := range c.Upstreams {
		specs[i] = originate.Spec{Host: u.Host, Port: uint16(u.Port), InjectHeaders: u.InjectHeaders, TLS: originate.TLSSpec{
			ClientCertificate: u.TLS.ClientCertificate, ClientKey: u.TLS.ClientKey, CA: u.TLS.CA,
			ServerName: u.TLS.ServerName, MinVersion: u.TLS.MinVersion,
		}}
	}
	return specs
}

// Metrics configures the metrics and health listener.
type Metrics struct {
	// Listen is the metrics listener's host:port. If empty, 127.0.0.1:9090 is used.
	Listen string `yaml:"listen"`
}

// DNS configures name resolution and the private-address guard.
type DNS struct {
	// Upstreams are the DNS servers egressd asks, as host:port (port 53 if left
	// out). If empty, the nameservers in ResolvConf.
	Upstreams []string `yaml:"upstreams"`
	// ResolvConf supplies search domains and ndots (and the default upstreams).
	// If empty, /etc/resolv.conf.
	ResolvConf string `yaml:"resolv_conf"`
	// HostsFile answers names before any query. If empty, /etc/hosts.
	HostsFile string `yaml:"hosts_file"`
	// Timeout bounds one query to one upstream. If zero, 2s.
	Timeout time.Duration `yaml:"timeout"`
	// Attempts is how many rounds over the upstreams a query gets. If zero, 2.
	Attempts int `yaml:"attempts"`
	// MinTTL and MaxTTL clamp how long answers are cached. If MaxTTL is zero, 5m;
	// MinTTL zero keeps each answer exactly as long as its TTL.
	MinTTL time.Duration `yaml:"min_ttl"`
	MaxTTL time.Duration `yaml:"max_ttl"`
	// CacheSize bounds the number of cached answers. If zero, 10000.
	CacheSize int `yaml:"cache_size"`
	// AllowPrivate lists CIDRs (or addresses) exempt from the private-address guard
	// for every host. Prefer an IP or CIDR rule in the allowlist, which is visible
	// next to the hosts it serves.
	AllowPrivate []string `yaml:"allow_private"`
	// Listen, if set, serves DNS on host:port (UDP and TCP) for clients that resolve
	// names themselves: allowed names are answered, others refused.
	Listen string `yaml:"listen"`
	// Refuse is the answer for names the allowlist does not allow: "refused" or
	// "nxdomain". If empty, "refused".
	Refuse string `yaml:"refuse"`
}

// Admin configures the admin API listener.
type Admin struct {
	// Listen is the admin listener's host:port. If empty, 127.0.0.1:9091.
	Listen string `yaml:"listen"`
	// TokenFile holds the bearer token every admin request must carry. If empty, the
	// admin listener does not start.
	TokenFile string `yaml:"token_file"`
	// DenialTargets bounds the table of recent denials. If zero, 1000.
	DenialTargets int `yaml:"denial_targets"`
	// SessionTTL is how long a console sign-in lasts. If zero, 8h.
	SessionTTL time.Duration `yaml:"session_ttl"`
	// TLSCertFile and TLSKeyFile, if set, put the admin listener (API and console)
	// on TLS, and mark the console's cookie Secure.
	TLSCertFile string `yaml:"tls_cert_file"`
	TLSKeyFile  string `yaml:"tls_key_file"`
}

// Secrets configures the secret store. With File empty there is no store.
type Secrets struct {
	// File is the encrypted secrets file ('egressd secrets init' creates it).
	File string `yaml:"file"`
	// KeyFile holds the master key (32 bytes, base64), mode 0600. If empty, the key
	// comes from the environment variable EGRESSD_SECRETS_KEY.
	KeyFile string `yaml:"key_file"`
	// PreviousKeyFile, during a key rotation, holds the old key, to read with.
	PreviousKeyFile string `yaml:"previous_key_file"`
	// RuntimeTokenFile, if set, holds a token that functions must send as
	// "Authorization: Bearer <token>" to the runtime API.
	RuntimeTokenFile string `yaml:"runtime_token_file"`
	// CreateIfMissing creates an empty store, sealed with the key, when File does not
	// exist at start: for a fresh volume (a Kubernetes PersistentVolumeClaim), where
	// no one has run 'egressd secrets init'. An existing file is never touched.
	CreateIfMissing bool `yaml:"create_if_missing"`
	// LockTimeout bounds a write's wait for the store's lock (held by another
	// process, or another write); past it the write is refused with 503 and nothing
	// is changed. If zero, 5s is used.
	LockTimeout time.Duration `yaml:"lock_timeout"`
}

// Scheduler configures the schedule runner. Without a functions file it is off.
type Scheduler struct {
	// Enabled runs schedules in this egressd. If unset, true; set it to false on every
	// replica but one.
	Enabled *bool `yaml:"enabled"`
	// FunctionsFile lists the functions (name, url, state); hot-reloaded.
	FunctionsFile string `yaml:"functions_file"`
	// StateFile keeps schedules and their state across restarts. If empty, schedules
	// live in memory only and are gone after a restart.
	StateFile string `yaml:"state_file"`
	// MaxSchedules bounds the schedules in total. If zero, 10.
	MaxSchedules int `yaml:"max_schedules"`
	// InvokeTimeout bounds one invocation. If zero, 30s.
	InvokeTimeout time.Duration `yaml:"invoke_timeout"`
}

// Log configures logging.
type Log struct {
	// Level is debug, info, warn or error. If empty, info is used.
	Level string `yaml:"level"`
	// Format is json or text. If empty, json is used.
	Format string `yaml:"format"`
}

// applyDefaults fills every zero value that has a default. It is the one place
// defaults are set.
func (c *Config) applyDefaults() {
	setDefault(&c.Mode, ModeEnforce)
	// GOMAXPROCS and GOGC in the environment stand for absent keys: Go programs
	// honour them, and an operator who sets them means it.
	if os.Getenv("GOMAXPROCS") == "" {
		setDefault(&c.Processors, defaults.Processors)
	}
	if os.Getenv("GOGC") == "" {
		setDefault(&c.GCPercent, defaults.GCPercent)
	}
	setDefault(&c.Proxy.Listen, defaults.ProxyListen)
	if len(c.Proxy.AllowedPorts) == 0 {
		c.Proxy.AllowedPorts = defaults.AllowedPorts()
	}
	setDefault(&c.Proxy.ReadHeaderTimeout, defaults.ReadHeaderTimeout)
	setDefault(&c.Proxy.IdleTimeout, defaults.IdleTimeout)
	setDefault(&c.Proxy.DialTimeout, defaults.DialTimeout)
	setDefault(&c.Proxy.MaxHeaderBytes, defaults.MaxHeaderBytes)
	setDefault(&c.Proxy.MaxResponseHeaderBytes, defaults.MaxResponseHeaderBytes)
	setDefault(&c.Secrets.LockTimeout, defaults.SecretsLockTimeout)
	setDefault(&c.Proxy.HalfCloseTimeout, defaults.HalfCloseTimeout)
	setDefault(&c.Proxy.ResponseHeaderTimeout, defaults.ResponseHeaderTimeout)
	setDefault(&c.Proxy.MaxConnections, defaults.MaxConnections)
	setDefault(&c.Proxy.DrainTimeout, defaults.DrainTimeout)
	setDefault(&c.Proxy.CloseRevokedTunnels, new(true))
	setDefault(&c.Metrics.Listen, defaults.MetricsListen)
	setDefault(&c.DNS.Timeout, defaults.DNSTimeout)
	setDefault(&c.DNS.Attempts, defaults.DNSAttempts)
	setDefault(&c.DNS.MaxTTL, defaults.DNSMaxTTL)
	setDefault(&c.DNS.CacheSize, defaults.DNSCacheSize)
	setDefault(&c.DNS.Refuse, "refused")
	setDefault(&c.DNS.ResolvConf, defaults.ResolvConf)
	setDefault(&c.DNS.HostsFile, defaults.HostsFile)
	setDefault(&c.Admin.Listen, defaults.AdminListen)
	setDefault(&c.Admin.DenialTargets, defaults.DenialTargets)
	setDefault(&c.Admin.SessionTTL, defaults.ConsoleSessionTTL)
	setDefault(&c.Proxy.TransparentDropOther, new(true))
	setDefault(&c.Scheduler.Enabled, new(true))
	setDefault(&c.Scheduler.MaxSchedules, defaults.MaxSchedules)
	if c.Cluster.Etcd.Enabled() {
		setDefault(&c.Cluster.Etcd.Prefix, defaults.EtcdPrefix)
		setDefault(&c.Cluster.Etcd.DialTimeout, defaults.EtcdDialTimeout)
		setDefault(&c.Cluster.Etcd.SessionTTL, defaults.EtcdSessionTTL)
	}
	setDefault(&c.Scheduler.InvokeTimeout, defaults.InvokeTimeout)
	setDefault(&c.Log.Level, "info")
	setDefault(&c.Log.Format, "json")
}

func setDefault[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}

// LoadFile reads and validates the config file at an OS path. Relative allowlist paths
// become OS paths relative to the file's directory.
func LoadFile(name string) (*Config, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, unwrapPath(err))
	}
	relative := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(filepath.Dir(name), p)
	}
	c, err := parse(name, data, relative)
	if err != nil {
		return nil, err
	}
	c.DNS.HostsFile, c.DNS.ResolvConf = relative(c.DNS.HostsFile), relative(c.DNS.ResolvConf)
	for _, p := range []*string{&c.Admin.TokenFile, &c.Secrets.File, &c.Secrets.KeyFile, &c.Secrets.PreviousKeyFile,
		&c.Secrets.RuntimeTokenFile, &c.Scheduler.FunctionsFile, &c.Scheduler.StateFile, &c.Proxy.UpstreamCAFile, &c.ManagedAllowlist.File,
		&c.Admin.TLSCertFile, &c.Admin.TLSKeyFile, &c.Cluster.Etcd.TLS.CAFile, &c.Cluster.Etcd.TLS.CertFile, &c.Cluster.Etcd.TLS.KeyFile, &c.Cluster.Etcd.PasswordFile} {
		if *p != "" {
			*p = relative(*p)
		}
	}
	for i := range c.Upstreams {
		if ca := &c.Upstreams[i].TLS.CA; strings.Contains(*ca, "/") {
			*ca = relative(*ca) // a file; a name without '/' is a secret
		}
	}
	return c, nil
}

// LoadFS reads and validates the config file name in fsys, such as the defaults
// embedded in the binary. Allowlist paths become fs.FS names relative to name's directory.
func LoadFS(fsys fs.FS, name string) (*Config, error) {
	data, err := fs.ReadFile(fsys, name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, unwrapPath(err))
	}
	return parse(name, data, func(p string) string { return path.Join(path.Dir(name), p) })
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// parse decodes and validates config data read from file name; resolve turns an
// allowlist path as written into one the policy loader can open. Every problem of the
// file comes in one error, in line order: a key of the wrong type does not hide a bad
// value elsewhere. Only a syntax error, after which nothing can be read, comes alone.
func parse(name string, data []byte, resolve func(string) string) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, yamlError(name, data, err)
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var ps Problems
	// An empty file decodes as io.EOF: all defaults, and validate asks for an allowlist.
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if !errors.As(err, &te) || !decodedTheRest(te) {
			return nil, yamlError(name, data, err)
		}
		// What decoded is in c; the keys that did not are these problems.
		ps = append(ps, yamlError(name, data, err).(Problems)...)
	}
	c.File = name
	c.applyDefaults()
	if err := c.validate(&root); err != nil {
		ps = append(ps, err.(Problems)...)
	}
	if len(ps) > 0 {
		sortByLine(ps)
		return nil, ps
	}
	for i, p := range c.Allowlist {
		c.Allowlist[i] = resolve(p)
	}
	return &c, nil
}

// decodedTheRest reports whether yaml.v3 went on decoding past every error of te:
// it does for unknown keys and values of the wrong type, not for a duplicate key.
func decodedTheRest(te *yaml.TypeError) bool {
	for _, m := range te.Errors {
		rest := m
		if sm := lineRE.FindStringSubmatch(m); sm != nil {
			rest = sm[2]
		}
		if !unknownFieldRE.MatchString(rest) && !cannotRE.MatchString(rest) {
			return false
		}
	}
	return true
}

// Problems is every error found in one config file.
type Problems []string

func (p Problems) Error() string { return strings.Join(p, "\n") }

// sortByLine orders "file:line: ..." problems by line, keeping the order of those on
// one line.
func sortByLine(ps Problems) {
	line := func(p string) int {
		if m := problemLineRE.FindStringSubmatch(p); m != nil {
			n, _ := strconv.Atoi(m[1])
			return n
		}
		return 0
	}
	sort.SliceStable(ps, func(i, j int) bool { return line(ps[i]) < line(ps[j]) })
}

var (
	problemLineRE  = regexp.MustCompile(`^[^\n]*?:(\d+): `)
	lineRE         = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
	unknownFieldRE = regexp.MustCompile(`^field (\S+) not found in type \S+$`)
	cannotRE       = regexp.MustCompile("^cannot unmarshal !!(\\w+) `(.*)` into (\\S+)$")
)

// yamlError rewrites yaml.v3's messages ("line 3: field foo not found in type
// config.Proxy") into file:line messages that say what to do. data is the file, for
// the one message whose line yaml.v3 gets wrong.
func yamlError(file string, data []byte, err error) error {
	var msgs []string
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	} else {
		msgs = []string{err.Error()}
	}
	var out Problems
	for _, m := range msgs {
		line, rest := "", m
		if sm := lineRE.FindStringSubmatch(m); sm != nil {
			line, rest = sm[1], sm[2]
		}
		switch sm := unknownFieldRE.FindStringSubmatch(rest); {
		case sm != nil:
			rest = fmt.Sprintf("unknown key %q; check its spelling and indentation against the README's configuration reference", sm[1])
		case cannotRE.MatchString(rest):
			sm := cannotRE.FindStringSubmatch(rest)
			rest = fmt.Sprintf("%q is not a valid %s", sm[2], goTypeName(sm[3]))
		case rest == "did not find expected key" && line != "":
			// yaml.v3 names the line of the last key it read; the line it could not
			// place is the next one with content: usually a key indented wrongly.
			n, _ := strconv.Atoi(line)
			line = strconv.Itoa(nextContentLine(data, n))
			rest = "this line's indentation matches no key above it; indent it as its siblings are (spaces, not tabs)"
		}
		if line != "" {
			out = append(out, fmt.Sprintf("%s:%s: %s", file, line, rest))
		} else {
			out = append(out, fmt.Sprintf("%s: %s", file, rest))
		}
	}
	return out
}

// nextContentLine is the first line after line n (1-based) that is neither blank nor
// a comment, or n if there is none.
func nextContentLine(data []byte, n int) int {
	lines := strings.Split(string(data), "\n")
	for i := n; i < len(lines); i++ { // lines[i] is line i+1
		if t := strings.TrimSpace(lines[i]); t != "" && !strings.HasPrefix(t, "#") {
			return i + 1
		}
	}
	return n
}

func goTypeName(t string) string {
	switch t {
	case "time.Duration":
		return "duration (write it as 500ms, 10s, 5m or 1h)"
	case "int", "[]int":
		return "whole number"
	case "bool", "*bool":
		return "boolean (true or false)"
	case "[]string":
		return "list"
	}
	return "value for this key"
}

// maxProcessors is the Go runtime's own ceiling for GOMAXPROCS; maxGCPercent lets
// the heap grow a hundredfold, past any sense for a sidecar, before a collection.
const (
	maxProcessors = 1024
	maxGCPercent  = 10000
)

// validate checks values that decode but make no sense, with the line of each key.
func (c *Config) validate(root *yaml.Node) error {
	var ps Problems
	add := func(keys []string, format string, args ...any) {
		ps = append(ps, fmt.Sprintf("%s:%d: %s: %s", c.File, lineOf(root, keys...), strings.Join(keys, "."), fmt.Sprintf(format, args...)))
	}
	if c.Mode != ModeEnforce && c.Mode != ModeReport {
		add([]string{"mode"}, "%q is not a mode; write enforce or report", c.Mode)
	}
	checkListen := func(keys []string, v string) {
		_, port, err := net.SplitHostPort(v)
		if err != nil {
			add(keys, "%q is not host:port; write something like 127.0.0.1:3128", v)
			return
		}
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			add(keys, "%q has an invalid port; use 0 to 65535", v)
		}
	}
	checkListen([]string{"proxy", "listen"}, c.Proxy.Listen)
	if c.Proxy.TransparentListen != "" {
		checkListen([]string{"proxy", "transparent_listen"}, c.Proxy.TransparentListen)
	}
	checkListen([]string{"metrics", "listen"}, c.Metrics.Listen)
	checkListen([]string{"admin", "listen"}, c.Admin.Listen)
	listeners := map[string]string{}
	for _, l := range []struct{ key, addr string }{
		{"proxy.listen", c.Proxy.Listen}, {"metrics.listen", c.Metrics.Listen}, {"admin.listen", c.Admin.Listen},
		{"proxy.transparent_listen", c.Proxy.TransparentListen},
	} {
		if l.addr == "" {
			continue
		}
		if other, dup := listeners[l.addr]; dup && !strings.HasSuffix(l.addr, ":0") {
			k := strings.Split(l.key, ".")
			add(k, "%q is also %s; give each listener its own port", l.addr, other)
		}
		listeners[l.addr] = l.key
	}
	if (c.Admin.TLSCertFile == "") != (c.Admin.TLSKeyFile == "") {
		add([]string{"admin", "tls_cert_file"}, "tls_cert_file and tls_key_file go together; set both or neither")
	}
	if c.Admin.SessionTTL < 0 {
		add([]string{"admin", "session_ttl"}, "%s is negative; leave it out for the default (8h)", c.Admin.SessionTTL)
	}
	if c.Admin.DenialTargets < 0 {
		add([]string{"admin", "denial_targets"}, "%d is negative; leave it out for the default", c.Admin.DenialTargets)
	}
	for _, p := range c.Proxy.AllowedPorts {
		if p < 1 || p > 65535 {
			add([]string{"proxy", "allowed_ports"}, "%d is not a port; a port is a number from 1 to 65535", p)
		}
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"read_header_timeout", c.Proxy.ReadHeaderTimeout},
		{"idle_timeout", c.Proxy.IdleTimeout},
		{"dial_timeout", c.Proxy.DialTimeout},
		{"drain_timeout", c.Proxy.DrainTimeout},
		{"response_header_timeout", c.Proxy.ResponseHeaderTimeout},
		{"half_close_timeout", c.Proxy.HalfCloseTimeout},
	} {
		if d.v < 0 {
			add([]string{"proxy", d.key}, "%s is negative; leave it out for the default", d.v)
		}
	}
	if c.Secrets.LockTimeout < 0 {
		add([]string{"secrets", "lock_timeout"}, "%s is negative; leave it out for the default", c.Secrets.LockTimeout)
	}
	if c.Proxy.MaxHeaderBytes < 0 {
		add([]string{"proxy", "max_header_bytes"}, "%d is negative; leave it out for the default", c.Proxy.MaxHeaderBytes)
	}
	if c.Proxy.MaxResponseHeaderBytes < 0 {
		add([]string{"proxy", "max_response_header_bytes"}, "%d is negative; leave it out for the default", c.Proxy.MaxResponseHeaderBytes)
	}
	if c.Processors < 0 || c.Processors > maxProcessors {
		add([]string{"processors"}, "%d is not a processor count; write a number from 1 to %d, or leave it out for 1", c.Processors, maxProcessors)
	}
	if c.GCPercent < 0 || c.GCPercent > maxGCPercent {
		add([]string{"gc_percent"}, "%d is out of range; write a number from 1 to %d, or leave it out for %d", c.GCPercent, maxGCPercent, defaults.GCPercent)
	}
	if c.Proxy.MaxConnections < 0 {
		add([]string{"proxy", "max_connections"}, "%d is negative; leave it out for the default", c.Proxy.MaxConnections)
	}
	for _, u := range c.DNS.Upstreams {
		host := u
		if h, port, err := net.SplitHostPort(u); err == nil {
			host = h
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
				add([]string{"dns", "upstreams"}, "%q has an invalid port; write host:port, such as 127.0.0.1:53", u)
				continue
			}
		}
		if _, err := netip.ParseAddr(strings.Trim(host, "[]")); err != nil {
			add([]string{"dns", "upstreams"}, "%q is not an IP address; name upstream servers by address, such as 10.96.0.10:53", u)
		}
	}
	for _, p := range c.DNS.AllowPrivate {
		if _, err := ParsePrefixOrAddr(p); err != nil {
			add([]string{"dns", "allow_private"}, "%q is not a CIDR or address; write something like 10.20.0.0/16", p)
		}
	}
	if c.DNS.Listen != "" {
		checkListen([]string{"dns", "listen"}, c.DNS.Listen)
	}
	if c.DNS.Refuse != "refused" && c.DNS.Refuse != "nxdomain" {
		add([]string{"dns", "refuse"}, "%q is not an answer; write refused or nxdomain", c.DNS.Refuse)
	}
	if c.DNS.Timeout < 0 || c.DNS.MinTTL < 0 || c.DNS.MaxTTL < 0 {
		add([]string{"dns"}, "timeout, min_ttl and max_ttl cannot be negative")
	}
	if c.DNS.MinTTL > c.DNS.MaxTTL {
		add([]string{"dns", "min_ttl"}, "%s is above max_ttl (%s)", c.DNS.MinTTL, c.DNS.MaxTTL)
	}
	c.validateCluster(add)
	switch {
	case c.Cluster.Etcd.Enabled() && c.Secrets.File != "":
		add([]string{"secrets", "file"}, "is set with cluster.etcd; in cluster mode the secrets live in etcd: remove secrets.file, keep key_file, and copy the file's secrets there with 'egressd secrets migrate'")
	case c.Cluster.Etcd.Enabled() && c.Secrets.KeyFile == "" && (c.Secrets.PreviousKeyFile != "" || c.Secrets.RuntimeTokenFile != ""):
		add([]string{"secrets"}, "in cluster mode the secrets on etcd are on when secrets.key_file is set; set it")
	case !c.Cluster.Etcd.Enabled() && c.Secrets.File == "" && (c.Secrets.KeyFile != "" || c.Secrets.PreviousKeyFile != "" || c.Secrets.RuntimeTokenFile != ""):
		add([]string{"secrets"}, "key files are set but secrets.file is not; name the secrets file, or remove the section")
	}
	if c.Scheduler.MaxSchedules < 0 || c.Scheduler.InvokeTimeout < 0 {
		add([]string{"scheduler"}, "max_schedules and invoke_timeout cannot be negative")
	}
	for i, u := range c.Upstreams {
		if u.Port < 0 || u.Port > 65535 {
			addAt(root, &ps, c.File, i, "port %d is not a port; leave it out for 443", u.Port)
		}
	}
	if _, errs := originate.Compile(c.UpstreamSpecs()); len(errs) > 0 {
		for _, err := range errs {
			i := upstreamIndex(err.Error())
			ps = append(ps, fmt.Sprintf("%s:%d: %s", c.File, lineOfItem(root, "upstreams", i), err))
		}
	}
	if len(c.Upstreams) > 0 && !c.SecretsOn() {
		for i, u := range c.Upstreams {
			readsSecret := u.TLS.ClientCertificate != "" || u.TLS.ClientKey != "" || (u.TLS.CA != "" && !strings.Contains(u.TLS.CA, "/"))
			for _, v := range u.InjectHeaders {
				readsSecret = readsSecret || strings.Contains(v, "${secret:")
			}
			if readsSecret {
				addAt(root, &ps, c.File, i, "it reads secrets, but there is no secret store (secrets.file, or secrets.key_file in cluster mode)")
			}
		}
	}
	if len(c.Allowlist) == 0 {
		add([]string{"allowlist"}, "no allowlist files or directories; add at least one, such as allowlist.d/")
	}
	for _, p := range c.Allowlist {
		if p == "" {
			add([]string{"allowlist"}, "empty path; remove it or name a file or directory")
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add([]string{"log", "level"}, "%q is not a level; write debug, info, warn or error", c.Log.Level)
	}
	if c.Log.Format != "json" && c.Log.Format != "text" {
		add([]string{"log", "format"}, "%q is not a format; write json or text", c.Log.Format)
	}
	if len(ps) > 0 {
		return ps
	}
	return nil
}

// ParsePrefixOrAddr parses a CIDR, or a single address as a /32 or /128.
func ParsePrefixOrAddr(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// lineOf returns the line of the value at the key path in a decoded YAML document, or
// of the deepest key found on the way, or 1.
// addAt adds a problem about upstreams[i], at its line.
func addAt(root *yaml.Node, ps *Problems, file string, i int, format string, args ...any) {
	*ps = append(*ps, fmt.Sprintf("%s:%d: upstreams[%d]: %s", file, lineOfItem(root, "upstreams", i), i, fmt.Sprintf(format, args...)))
}

var upstreamIndexRE = regexp.MustCompile(`^upstreams\[(\d+)\]`)

// upstreamIndex is the entry an originate.Compile error is about.
func upstreamIndex(msg string) int {
	if m := upstreamIndexRE.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	return -1
}

// lineOfItem is the line of the i-th item of the top-level list key, or of the key.
func lineOfItem(root *yaml.Node, key string, i int) int {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	if n.Kind == yaml.MappingNode {
		for j := 0; j+1 < len(n.Content); j += 2 {
			if n.Content[j].Value == key {
				list := n.Content[j+1]
				if list.Kind == yaml.SequenceNode && i >= 0 && i < len(list.Content) {
					return list.Content[i].Line
				}
				return n.Content[j].Line
			}
		}
	}
	return 1
}

func lineOf(root *yaml.Node, keys ...string) int {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := 1
	for _, k := range keys {
		if n.Kind != yaml.MappingNode {
			break
		}
		found := false
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == k {
				line, n, found = n.Content[i].Line, n.Content[i+1], true
				break
			}
		}
		if !found {
			break
		}
	}
	return line
}

// validateCluster checks the cluster section; nothing is dialled here.
func (c *Config) validateCluster(add func(keys []string, format string, args ...any)) {
	e := c.Cluster.Etcd
	key := func(k ...string) []string { return append([]string{"cluster", "etcd"}, k...) }
	if !e.Enabled() {
		if e.Prefix != "" || e.Username != "" || e.PasswordFile != "" || e.TLS != (EtcdTLS{}) {
			add(key("endpoints"), "cluster.etcd is set without endpoints; list etcd's client URLs, such as https://etcd-0.etcd:2379, or remove the section")
		}
		return
	}
	for _, ep := range e.Endpoints {
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") {
			add(key("endpoints"), "%q is not an etcd client URL; write it as https://HOST:PORT", ep)
		}
	}
	if !strings.HasPrefix(e.Prefix, "/") || !strings.HasSuffix(e.Prefix, "/") || len(e.Prefix) < 2 {
		add(key("prefix"), "%q must start and end with /, such as /egressd/", e.Prefix)
	}
	if (e.Username == "") != (e.PasswordFile == "") {
		add(key("username"), "username and password_file go together; set both or neither")
	}
	if (e.TLS.CertFile == "") != (e.TLS.KeyFile == "") {
		add(key("tls"), "cert_file and key_file go together; set both or neither")
	}
	if e.DialTimeout < 0 || e.SessionTTL < 0 {
		add(key(), "dial_timeout and session_ttl cannot be negative")
	}
	if e.SessionTTL > 0 && e.SessionTTL < 2*time.Second {
		add(key("session_ttl"), "%s is too short for a lease; use 2s or more", e.SessionTTL)
	}
	if c.Scheduler.StateFile != "" {
		add([]string{"scheduler", "state_file"}, "is set with cluster.etcd; in cluster mode the schedules and their state live in etcd: remove state_file")
	}
	if c.ManagedAllowlist.File != "" {
		add([]string{"managed_allowlist", "file"}, "is set with cluster.etcd; in cluster mode managed rules live in etcd, under the prefix: remove managed_allowlist")
	}
}
