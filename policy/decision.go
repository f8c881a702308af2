package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Reason is a fixed, lower-case phrase saying why a decision was made. The same phrase
// appears in the access log, the X-Egressd-Denied header and the metric labels, so
// the set is small and closed.
type Reason string

// The reasons a Decision can give.
const (
	ReasonAllowed        Reason = "allowed"
	ReasonNotListed      Reason = "not on the allowlist"
	ReasonPort           Reason = "port not allowed"
	ReasonIPNotListed    Reason = "ip address not on the allowlist"
	ReasonNonCanonicalIP Reason = "non-canonical ip address"
	ReasonInvalidHost    Reason = "invalid host"
	// Reasons the proxy adds after the allowlist has allowed a target.
	ReasonPrivateAddress Reason = "private address" // the private-address guard
	ReasonLoop           Reason = "proxy loop"      // a request to egressd itself
	// ReasonDestinationMismatch: an intercepted connection went to an address its
	// name does not resolve to (proxy.transparent_verify_destination).
	ReasonDestinationMismatch Reason = "destination not the name's address"
)

type hintKind uint8

const (
	hintNone hintKind = iota
	hintParentExact
	hintWildcardSelf
	hintPort
)

// Decision is the answer to one lookup. It is a value: it stays valid after the
// Matcher that made it has been replaced.
type Decision struct {
	Allow  bool
	Reason Reason
	Rule   *Rule      // the rule that allowed the target; nil for a denial
	Host   string     // the target as compared: normalized name or canonical address
	Port   uint16     // the target port
	Addr   netip.Addr // the address, when the target is an IP literal

	hint     hintKind
	related  *Rule    // the rule the hint refers to
	set      *portSet // for a port denial: the rules of the host, whose ports the hint lists
	defaults []uint16 // the ports a rule without a port allows
}

func (d Decision) allow(r *Rule) Decision {
	d.Allow, d.Reason, d.Rule = true, ReasonAllowed, r
	return d
}

func (d Decision) denyPort(s *portSet) Decision {
	d.Reason, d.hint, d.related, d.set = ReasonPort, hintPort, ruleOf(s), s
	return d
}

// Target returns "host:port", with brackets around an IPv6 address.
func (d Decision) Target() string {
	host := d.Host
	if d.Addr.Is6() {
		host = "[" + host + "]"
	}
	return host + ":" + strconv.Itoa(int(d.Port))
}

// Hint says, for a denial, what an operator can add to allow the target. It is empty
// for an allowed target. It is built on demand, so deciding does not pay for it.
func (d Decision) Hint() string {
	if d.Allow {
		return ""
	}
	switch d.Reason {
	case ReasonNonCanonicalIP:
		return "write IP addresses in canonical form, such as 127.0.0.1; other spellings are always denied"
	case ReasonInvalidHost:
		return "the target is not a valid host name"
	case ReasonIPNotListed:
		return fmt.Sprintf("an IP address is reached only through an IP or CIDR rule; add %s (or a CIDR that contains it), or use the host name", d.ruleTarget())
	}
	switch d.hint {
	case hintParentExact:
		return fmt.Sprintf("%s (%s) does not cover its subdomains; add %s or *.%s",
			d.related.Text, d.related.Location(), d.ruleTarget(), d.related.Host)
	case hintWildcardSelf:
		return fmt.Sprintf("a wildcard does not cover the domain itself (%s at %s); add %s",
			d.related.Text, d.related.Location(), d.ruleTarget())
	case hintPort:
		allowed := d.set.allowedPorts(d.defaults)
		word := "port"
		if len(allowed) > 1 {
			word = "ports"
		}
		return fmt.Sprintf("%s is allowed on %s %s only (%s at %s); add %s",
			d.Host, word, joinPorts(allowed), d.related.Text, d.related.Location(), d.Target())
	}
	return fmt.Sprintf("add %s to an allowlist file", d.ruleTarget())
}

// SuggestedRule is the rule that would allow d's target: the host alone when its
// port is one of the default ports, host:port otherwise.
func (d Decision) SuggestedRule() string { return d.ruleTarget() }

// ruleTarget is the rule that would allow d's target: the host alone when its port is
// one of the default ports, host:port otherwise.
func (d Decision) ruleTarget() string {
	if slices.Contains(d.defaults, d.Port) {
		return d.Host
	}
	return d.Target()
}

func joinPorts(ports []uint16) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ", ")
}
