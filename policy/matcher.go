package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/net/publicsuffix"
)

// DefaultAllowedPorts are the ports a rule without a port allows when Options.AllowedPorts is empty.
var DefaultAllowedPorts = []uint16{80, 443}

// Options are the settings a Matcher is compiled with.
type Options struct {
	// AllowedPorts are the ports that a host or CIDR rule without a port allows.
	// If empty, DefaultAllowedPorts is used.
	AllowedPorts []uint16
}

// Matcher is a compiled, immutable allowlist. Its methods are safe for concurrent use.
// Lookup cost does not depend on the number of rules: an exact host is one map lookup,
// wildcards are found by walking the host's parent domains, and IP literals by one map
// lookup per prefix length in use.
type Matcher struct {
	exact    map[string]*portSet // host -> rules naming it
	wild     map[string]*portSet // "example.com" -> rules "*.example.com"
	prefixes []prefixTable       // by prefix length, longest first
	ports    []uint16            // the ports a rule without a port allows, sorted
	rules    []Rule
}

// portSet holds the rules for one host, wildcard domain or prefix.
type portSet struct {
	any   *Rule      // a rule without a port: allows Matcher.ports
	ports []portRule // rules naming one port each
}

type portRule struct {
	port uint16
	rule *Rule
}

type prefixTable struct {
	bits int
	is4  bool
	sets map[netip.Prefix]*portSet
}

// allows returns the rule in s that allows port, or nil.
func (s *portSet) allows(port uint16, defaults []uint16) *Rule {
	for _, pr := range s.ports {
		if pr.port == port {
			return pr.rule
		}
	}
	if s.any != nil && slices.Contains(defaults, port) {
		return s.any
	}
	return nil
}

// add records r in s, or returns the rule it duplicates.
func (s *portSet) add(r *Rule) (dup *Rule) {
	if r.Port == 0 {
		if s.any != nil {
			return s.any
		}
		s.any = r
		return nil
	}
	for _, pr := range s.ports {
		if pr.port == r.Port {
			return pr.rule
		}
	}
	s.ports = append(s.ports, portRule{r.Port, r})
	return nil
}

// allowedPorts lists, for a hint, the ports the rules in s allow.
func (s *portSet) allowedPorts(defaults []uint16) []uint16 {
	var out []uint16
	if s.any != nil {
		out = append(out, defaults...)
	}
	for _, pr := range s.ports {
		out = append(out, pr.port)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Compile builds a Matcher from rules. It keeps its own copy of rules. A rule that
// allows exactly what an earlier one allows is a warning, not an error: the first one
// decides.
func Compile(rules []Rule, opts Options) (*Matcher, []Problem) {
	m := &Matcher{
		exact: make(map[string]*portSet, len(rules)),
		wild:  make(map[string]*portSet),
		ports: slices.Clone(opts.AllowedPorts),
		rules: slices.Clone(rules),
	}
	if len(m.ports) == 0 {
		m.ports = slices.Clone(DefaultAllowedPorts)
	}
	slices.Sort(m.ports)
	m.ports = slices.Compact(m.ports)

	// Sets are allocated in one slab: a million rules compile in one allocation, not a million.
	slab := make([]portSet, 0, len(rules))
	newSet := func() *portSet { slab = append(slab, portSet{}); return &slab[len(slab)-1] }
	getSet := func(tbl map[string]*portSet, key string) *portSet {
		s := tbl[key]
		if s == nil {
			s = newSet()
			tbl[key] = s
		}
		return s
	}
	prefixSets := map[netip.Prefix]*portSet{}

	var warnings []Problem
	for i := range m.rules {
		r := &m.rules[i]
		var s *portSet
		switch r.Kind {
		case KindExact:
			s = getSet(m.exact, r.Host)
		case KindWildcard:
			s = getSet(m.wild, r.Host)
		case KindPrefix:
			s = prefixSets[r.Prefix]
			if s == nil {
				s = newSet()
				prefixSets[r.Prefix] = s
			}
		default:
			continue
		}
		if dup := s.add(r); dup != nil {
			warnings = append(warnings, Problem{File: r.File, Line: r.Line, Rule: r.Text,
				Msg: fmt.Sprintf("duplicate of %q at %s; the first one is used", dup.Text, dup.Location())})
		}
	}
	m.prefixes = buildPrefixTables(prefixSets)
	return m, warnings
}

func buildPrefixTables(sets map[netip.Prefix]*portSet) []prefixTable {
	type lenKey struct {
		bits int
		is4  bool
	}
	byLen := map[lenKey]map[netip.Prefix]*portSet{}
	for p, s := range sets {
		k := lenKey{p.Bits(), p.Addr().Is4()}
		if byLen[k] == nil {
			byLen[k] = map[netip.Prefix]*portSet{}
		}
		byLen[k][p] = s
	}
	tables := make([]prefixTable, 0, len(byLen))
	for k, t := range byLen {
		tables = append(tables, prefixTable{bits: k.bits, is4: k.is4, sets: t})
	}
	slices.SortFunc(tables, func(a, b prefixTable) int { return b.bits - a.bits })
	return tables
}

// Rules returns the rules in force, in file order. The caller must not modify them.
func (m *Matcher) Rules() []Rule { return m.rules }

// AllowedPorts returns the ports a rule without a port allows. The caller must not modify them.
func (m *Matcher) AllowedPorts() []uint16 { return m.ports }

// Decide says whether host:port may be reached. host is a name or an IP literal
// (IPv6 with or without brackets), as it appears in a request; it is normalized here.
// For a normalized ASCII name, Decide does not allocate.
func (m *Matcher) Decide(host string, port uint16) Decision {
	d := Decision{Host: host, Port: port, defaults: m.ports}
	if !isNormalASCII(host) || endsInNumber(host) {
		addr, isIP, err := parseIPLiteral(host)
		if isIP {
			if err != nil {
				d.Reason = ReasonNonCanonicalIP
				return d
			}
			return m.decideAddr(d, addr)
		}
		h, err := NormalizeHost(host)
		if err != nil {
			d.Reason = ReasonInvalidHost
			return d
		}
		if endsInNumber(h) {
			// Unicode digits can normalize into an address ("１２７.０.０.１"): decide
			// it as the address it now is, so that no spelling of an IP passes as a name.
			return m.Decide(h, port)
		}
		d.Host = h
	}
	return m.decideName(d)
}

func (m *Matcher) decideName(d Decision) Decision {
	h := d.Host
	var portMiss *portSet
	if s := m.exact[h]; s != nil {
		if r := s.allows(d.Port, m.ports); r != nil {
			return d.allow(r)
		}
		portMiss = s
	}
	for parent := h; ; {
		i := strings.IndexByte(parent, '.')
		if i < 0 {
			break
		}
		parent = parent[i+1:]
		if s := m.wild[parent]; s != nil {
			if r := s.allows(d.Port, m.ports); r != nil {
				return d.allow(r)
			}
			if portMiss == nil {
				portMiss = s
			}
		}
	}
	if portMiss != nil {
		return d.denyPort(portMiss)
	}
	// The fast path in Decide skips validation; a denial can afford it.
	if validateHost(h) != nil {
		d.Reason = ReasonInvalidHost
		return d
	}
	d.Reason = ReasonNotListed
	if s := m.wild[h]; s != nil {
		d.hint, d.related = hintWildcardSelf, ruleOf(s)
		return d
	}
	for parent := h; ; {
		i := strings.IndexByte(parent, '.')
		if i < 0 {
			break
		}
		parent = parent[i+1:]
		if s := m.exact[parent]; s != nil {
			d.hint, d.related = hintParentExact, ruleOf(s)
			return d
		}
	}
	return d
}

func (m *Matcher) decideAddr(d Decision, addr netip.Addr) Decision {
	d.Addr = addr
	d.Host = addr.String()
	s := m.prefixSet(addr)
	if s == nil {
		d.Reason = ReasonIPNotListed
		return d
	}
	if r := s.allows(d.Port, m.ports); r != nil {
		return d.allow(r)
	}
	return d.denyPort(s)
}

// prefixSet returns the rules of the longest prefix that contains addr.
func (m *Matcher) prefixSet(addr netip.Addr) *portSet {
	addr = addr.Unmap()
	for _, t := range m.prefixes {
		if t.is4 != addr.Is4() {
			continue
		}
		p, err := addr.Prefix(t.bits)
		if err != nil {
			continue
		}
		if s := t.sets[p]; s != nil {
			return s
		}
	}
	return nil
}

// AllowsName reports whether some rule allows host on some port: an exact rule for
// it or a wildcard above it. The DNS listener answers such names. IP literals and
// invalid names are never allowed here.
func (m *Matcher) AllowsName(host string) bool {
	h, err := NormalizeHost(host)
	if err != nil || endsInNumber(h) {
		return false
	}
	if m.exact[h] != nil {
		return true
	}
	for parent := h; ; {
		i := strings.IndexByte(parent, '.')
		if i < 0 {
			return false
		}
		parent = parent[i+1:]
		if m.wild[parent] != nil {
			return true
		}
	}
}

// Exempt reports whether an IP or CIDR rule covers addr, which exempts it from the
// private-address guard: an operator who lists a range means to reach it. It makes a
// Matcher a guard.Exempter. A nil Matcher exempts nothing.
func (m *Matcher) Exempt(addr netip.Addr) bool { return m != nil && m.CoveringRule(addr) != nil }

// CoveringRule returns the IP or CIDR rule whose range contains addr, or nil.
func (m *Matcher) CoveringRule(addr netip.Addr) *Rule {
	if s := m.prefixSet(addr); s != nil {
		return ruleOf(s)
	}
	return nil
}

func ruleOf(s *portSet) *Rule {
	if s.any != nil {
		return s.any
	}
	return s.ports[0].rule
}

func publicSuffix(h string) (string, bool) { return publicsuffix.PublicSuffix(h) }
