package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/net/idna"
)

// maxHostLen is the longest DNS name in presentation form, without the trailing dot.
const maxHostLen = 253

// idnaProfile maps a name the way a resolver would look it up (lower case, Unicode
// normalization, punycode). StrictDomainName is off so that '_' passes, as it does in
// real DNS names; label syntax is checked by validateHost with messages of our own.
var idnaProfile = idna.New(
	idna.MapForLookup(),
	idna.Transitional(false),
	idna.StrictDomainName(false),
	idna.BidiRule(),
)

// NormalizeHost returns host in the form in which rules and request targets are
// compared: lower case, one trailing dot removed, internationalized labels in punycode.
// So "BÜCHER.example." and "xn--bcher-kva.example" normalize to the same string.
// It returns an error, saying what is wrong, for a name that is not a valid DNS name.
func NormalizeHost(host string) (string, error) {
	if isNormalASCII(host) {
		return host, validateHost(host)
	}
	h := strings.TrimSuffix(host, ".")
	if h == "" {
		return "", errors.New("empty host")
	}
	ascii, err := idnaProfile.ToASCII(h)
	if err != nil {
		if strings.HasPrefix(err.Error(), "idna: invalid label") || strings.Contains(err.Error(), "disallowed rune") {
			return "", fmt.Errorf("invalid host name %q: %s", h, strings.TrimPrefix(err.Error(), "idna: "))
		}
		return "", fmt.Errorf("invalid host name %q: %w", h, err)
	}
	return ascii, validateHost(ascii)
}

// isNormalASCII reports whether s is already in normal form as far as case, trailing
// dot and punycode go: only lower-case letters, digits, '-', '_' and '.', not ending in
// a dot. It is the allocation-free fast path of every lookup.
func isNormalASCII(s string) bool {
	if s == "" || s[len(s)-1] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

// validateHost checks the label syntax of a normalized host name.
func validateHost(h string) error {
	if h == "" {
		return errors.New("empty host")
	}
	if len(h) > maxHostLen {
		return fmt.Errorf("host name is %d characters long; a DNS name has at most %d", len(h), maxHostLen)
	}
	for label := range strings.SplitSeq(h, ".") {
		switch {
		case label == "":
			return errors.New("empty label; remove the extra dot")
		case len(label) > 63:
			return fmt.Errorf("label %q is %d characters long; a label has at most 63", label[:16]+"...", len(label))
		case label[0] == '-' || label[len(label)-1] == '-':
			return fmt.Errorf("label %q starts or ends with '-'", label)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("invalid character %q; a host name has letters, digits, '-', '_' and '.'", c)
			}
		}
	}
	return nil
}

// endsInNumber reports whether the last label of h is a number (decimal, or hex with
// 0x), as the WHATWG URL standard defines it. Such a name is an IPv4 address in some
// spelling: resolvers and inet_aton read "127.1", "0x7f000001", "2130706433" and
// "0177.0.0.1" as addresses, so egressd treats them as IP literals, never as names.
func endsInNumber(h string) bool {
	last := h[strings.LastIndexByte(h, '.')+1:]
	if last == "" {
		return false
	}
	if len(last) >= 2 && last[0] == '0' && (last[1] == 'x' || last[1] == 'X') {
		for i := 2; i < len(last); i++ {
			if !isHexDigit(last[i]) {
				return false
			}
		}
		return true
	}
	for i := 0; i < len(last); i++ {
		if last[i] < '0' || last[i] > '9' {
			return false
		}
	}
	return true
}

func isHexDigit(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// parseIPLiteral returns the address h spells when h is an IP literal: IPv6 with or
// without brackets, or canonical dotted-decimal IPv4. IPv4-mapped IPv6 addresses are
// returned as IPv4, so that one rule covers both spellings. ok is false when h is a
// name; err is set when h looks like an address but is not a canonical one.
func parseIPLiteral(h string) (addr netip.Addr, ok bool, err error) {
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	} else if !strings.Contains(h, ":") && !endsInNumber(strings.TrimSuffix(h, ".")) {
		return netip.Addr{}, false, nil
	}
	a, perr := netip.ParseAddr(h)
	if perr != nil || a.Zone() != "" {
		if strings.Contains(h, ":") {
			return netip.Addr{}, true, fmt.Errorf("%q is not a valid IPv6 address", h)
		}
		return netip.Addr{}, true, fmt.Errorf("%q is not a canonical IPv4 address; write it as four decimal numbers, such as 127.0.0.1", h)
	}
	return a.Unmap(), true, nil
}
