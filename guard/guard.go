// Package guard refuses destination addresses no function should reach: the cloud
// metadata service, the node's loopback, private networks, and every other range
// that is not the public internet.
//
// A name on the allowlist can still resolve to such an address, by mistake or on
// purpose (DNS rebinding). The proxy resolves each name once, asks the guard about
// every address, and dials only an address the guard let through. Operators who mean
// to reach a private range say so with an IP or CIDR rule in the allowlist, or with
// dns.allow_private. The guard knows nothing of names, ports or the allowlist.
package guard

import (
	"net/netip"
)

// Range is a denied address range and what to call it in a hint.
type Range struct {
	Prefix netip.Prefix
	Kind   string // "loopback", "link-local", "private", ...
}

// denied are the ranges that are not the public internet. Go's IsGlobalUnicast is
// not enough: it calls 0.0.0.0/8, 100.64.0.0/10 and 240.0.0.0/4 global.
var denied = []Range{
	{netip.MustParsePrefix("0.0.0.0/8"), "this-network"},
	{netip.MustParsePrefix("10.0.0.0/8"), "private"},
	{netip.MustParsePrefix("100.64.0.0/10"), "shared (carrier-grade NAT)"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("172.16.0.0/12"), "private"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignment"},
	{netip.MustParsePrefix("192.0.2.0/24"), "documentation"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking"},
	{netip.MustParsePrefix("198.51.100.0/24"), "documentation"},
	{netip.MustParsePrefix("203.0.113.0/24"), "documentation"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},
	{netip.MustParsePrefix("::/128"), "unspecified"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("fc00::/7"), "unique local"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
	{netip.MustParsePrefix("64:ff9b::/96"), "NAT64"},
	{netip.MustParsePrefix("2001::/32"), "Teredo"},
	{netip.MustParsePrefix("2001:db8::/32"), "documentation"},
	{netip.MustParsePrefix("2002::/16"), "6to4"},
}

// Exempter says whether an operator has allowed an address that the guard would
// otherwise deny: the proxy answers from the allowlist's IP and CIDR rules.
type Exempter interface {
	Exempt(netip.Addr) bool
}

// Guard checks destination addresses. Its zero value denies every range above.
type Guard struct {
	allow []netip.Prefix // dns.allow_private: exempt everywhere
}

// New returns a Guard that also lets through the ranges in allowPrivate.
func New(allowPrivate []netip.Prefix) *Guard {
	g := &Guard{}
	for _, p := range allowPrivate {
		g.allow = append(g.allow, unmapPrefix(p))
	}
	return g
}

// Verdict is the guard's answer for one address.
type Verdict struct {
	Denied bool
	Addr   netip.Addr // the address checked, IPv4-mapped IPv6 as IPv4
	Range  Range      // the denied range it is in, when Denied
}

// Check returns whether addr may be dialled. An IPv4-mapped IPv6 address
// (::ffff:a.b.c.d) is checked as its IPv4 address. ex may be nil.
func (g *Guard) Check(addr netip.Addr, ex Exempter) Verdict {
	a := addr.Unmap().WithZone("")
	v := Verdict{Addr: a}
	r, inRange := deniedRange(a)
	if !inRange {
		return v
	}
	for _, p := range g.allow {
		if p.Contains(a) {
			return v
		}
	}
	if ex != nil && ex.Exempt(a) {
		return v
	}
	v.Denied, v.Range = true, r
	return v
}

func deniedRange(a netip.Addr) (Range, bool) {
	for _, r := range denied {
		if r.Prefix.Contains(a) {
			return r, true
		}
	}
	return Range{}, false
}

func unmapPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p
}

// ExemptFunc adapts a function to Exempter.
type ExemptFunc func(netip.Addr) bool

// Exempt calls f.
func (f ExemptFunc) Exempt(a netip.Addr) bool { return f(a) }
