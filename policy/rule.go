package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// Kind says which form a rule has.
type Kind uint8

const (
	// KindExact matches one host name.
	KindExact Kind = iota + 1
	// KindWildcard matches every subdomain of Rule.Host at any depth, not Rule.Host itself.
	KindWildcard
	// KindPrefix matches IP-literal targets inside Rule.Prefix.
	KindPrefix
)

// Rule is one parsed allowlist line.
type Rule struct {
	Text   string       // the rule as written, without comment and surrounding space
	File   string       // the file it came from; empty for rules built in code
	Line   int          // its line in File, counting from 1
	Kind   Kind         // its form
	Host   string       // normalized host; for KindWildcard the domain under the "*."
	Prefix netip.Prefix // for KindPrefix; a single address is a /32 or /128
	Port   uint16       // the one port allowed; if zero, the configured default ports
}

// ManagedSource is the File of rules managed through the admin API: they have no
// file an operator edits, and Location names them "managed:<rule>".
const ManagedSource = "managed"

// Location returns "file:line", the place an operator edits, or "managed:<rule>"
// for a rule managed through the admin API.
func (r *Rule) Location() string {
	if r.File == ManagedSource {
		return ManagedSource + ":" + r.Text
	}
	if r.File == "" {
		return "line " + strconv.Itoa(r.Line)
	}
	return r.File + ":" + strconv.Itoa(r.Line)
}

// key identifies what a rule allows, so that duplicates can be found whatever their spelling.
func (r *Rule) key() string {
	var target string
	switch r.Kind {
	case KindWildcard:
		target = "*." + r.Host
	case KindPrefix:
		target = r.Prefix.String()
		if r.Prefix.Addr().Is6() && r.Port != 0 {
			target = "[" + target + "]"
		}
	default:
		target = r.Host
	}
	if r.Port == 0 {
		return target
	}
	return target + ":" + strconv.Itoa(int(r.Port))
}

// ParseRule parses one rule (without comment) in any of its forms. The error says
// what is wrong and, where it can, what to write instead.
func ParseRule(text string) (Rule, error) {
	r := Rule{Text: text}
	if text == "" {
		return r, errors.New("empty rule")
	}
	if i := strings.IndexAny(text, " \t"); i >= 0 {
		return r, errors.New("one rule per line; remove the space or put the second rule on its own line")
	}
	if strings.Contains(text, "://") {
		return r, urlError(text)
	}

	hostPart, port, err := splitPort(text)
	if err != nil {
		return r, err
	}
	r.Port = port

	if strings.Contains(hostPart, "/") {
		if p, perr := netip.ParsePrefix(strings.Trim(hostPart, "[]")); perr == nil {
			return prefixRule(r, p)
		}
		if looksLikeCIDR(hostPart) {
			return r, fmt.Errorf("invalid CIDR %q; write an address and a prefix length, such as 10.20.0.0/16 or 2001:db8::/32", hostPart)
		}
		host := hostPart[:strings.IndexByte(hostPart, '/')]
		return r, fmt.Errorf("a rule is a host without a path; write %q", host+portSuffix(port))
	}
	if strings.Contains(hostPart, "*") {
		return wildcardRule(r, hostPart)
	}
	if addr, isIP, ierr := parseIPLiteral(hostPart); isIP {
		if ierr != nil {
			return r, ierr
		}
		return prefixRule(r, netip.PrefixFrom(addr, addr.BitLen()))
	}
	h, err := NormalizeHost(hostPart)
	if err != nil {
		return r, err
	}
	if h != hostPart && endsInNumber(h) {
		// Unicode digits can normalize into an address ("１２７.０.０.１").
		return r, fmt.Errorf("%q normalizes to %q, an IP address; write the address itself", hostPart, h)
	}
	r.Kind, r.Host = KindExact, h
	return r, nil
}

func prefixRule(r Rule, p netip.Prefix) (Rule, error) {
	if p.Addr().Zone() != "" {
		return r, fmt.Errorf("an address with a zone (%q) cannot be a rule; remove the %%zone", p.Addr().Zone())
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	if masked := p.Masked(); masked != p {
		return r, fmt.Errorf("%s has bits set after the prefix length; write %s", p, masked)
	}
	r.Kind, r.Prefix = KindPrefix, p
	return r, nil
}

func wildcardRule(r Rule, hostPart string) (Rule, error) {
	first, rest, _ := strings.Cut(hostPart, ".")
	suggest := "*." + strings.TrimLeft(strings.ReplaceAll(rest, "*.", ""), ".")
	switch {
	case hostPart == "*" || hostPart == "*.":
		return r, errors.New(`a bare wildcard would allow every host; list the domains you need, such as "*.example.com"`)
	case strings.Count(hostPart, "*") > 1:
		return r, fmt.Errorf("only one wildcard is allowed, as the leftmost label; write %q", suggest+portSuffix(r.Port))
	case first != "*":
		if strings.Contains(first, "*") {
			return r, fmt.Errorf("a wildcard must be the whole leftmost label; write %q", "*."+rest+portSuffix(r.Port))
		}
		tail := hostPart[strings.Index(hostPart, "*"):]
		return r, fmt.Errorf("a wildcard must be the whole leftmost label; write %q", tail+portSuffix(r.Port))
	}
	h, err := NormalizeHost(rest)
	if err != nil {
		return r, err
	}
	if endsInNumber(h) {
		return r, errors.New("a wildcard cannot cover an IP address; use a CIDR such as 10.20.0.0/16")
	}
	if ps, _ := publicSuffix(h); ps == h {
		return r, fmt.Errorf("a wildcard directly over the public suffix %q would allow every domain under it; list the domains you need, such as \"*.example.%s\"", h, h)
	}
	r.Kind, r.Host = KindWildcard, h
	return r, nil
}

// splitPort splits "host:port", "[v6]:port" and "[v6/len]:port". A bare IPv6 address or
// CIDR has more than one ':' and no port.
func splitPort(text string) (host string, port uint16, err error) {
	var portText string
	switch {
	case strings.HasPrefix(text, "["):
		end := strings.IndexByte(text, ']')
		if end < 0 {
			return "", 0, errors.New("missing ']' after an IPv6 address")
		}
		host, after := text[:end+1], text[end+1:]
		if after == "" {
			return host, 0, nil
		}
		if after[0] != ':' {
			return "", 0, fmt.Errorf("unexpected %q after ']'; write [address]:port", after)
		}
		portText = after[1:]
		p, err := parsePort(portText)
		return host, p, err
	case strings.Count(text, ":") == 1:
		host, portText, _ = strings.Cut(text, ":")
		p, err := parsePort(portText)
		return host, p, err
	}
	return text, 0, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("invalid port %q: a port is a number from 1 to 65535", s)
	}
	return uint16(n), nil
}

func portSuffix(port uint16) string {
	if port == 0 {
		return ""
	}
	return ":" + strconv.Itoa(int(port))
}

func looksLikeCIDR(s string) bool {
	addr, _, _ := strings.Cut(strings.Trim(s, "[]"), "/")
	_, err := netip.ParseAddr(addr)
	return err == nil || strings.Contains(addr, ":") || endsInNumber(addr)
}

// urlError explains that a URL is not a rule, and gives the rule to write.
func urlError(text string) error {
	u, err := url.Parse(text)
	if err != nil || u.Host == "" {
		return errors.New("a rule is a host, not a URL; write just the host, such as example.com")
	}
	want := u.Hostname()
	if strings.Contains(want, ":") {
		want = "[" + want + "]"
	}
	if u.Port() != "" {
		want += ":" + u.Port()
	}
	return fmt.Errorf("a rule is a host, not a URL; write %q", want)
}
