// Package intercept installs, in a pod's network namespace, the nftables rules that
// make egressd's allowlist binding on code that ignores HTTP_PROXY: every outbound
// TCP connection of every user but egressd's own goes to egressd's transparent
// listener, outbound DNS to egressd's DNS listener, and other UDP and ICMP, which
// egressd cannot decide, is dropped. Loopback stays untouched, so HTTP_PROXY at
// 127.0.0.1 and the secrets API keep working.
//
// The rules live in a table of their own ("inet egressd"): Apply replaces it whole,
// so running it twice leaves one set, and Remove deletes it. It talks netlink
// through github.com/google/nftables, the one file that does; nothing shells out.
package intercept

import (
	"errors"
	"fmt"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table egressd owns, in the inet family.
const TableName = "egressd"

// Options say what to redirect where.
type Options struct {
	// ProxyPort is the transparent listener's port on loopback.
	ProxyPort uint16
	// DNSPort is the DNS listener's port on loopback; zero leaves DNS alone (then
	// dropped as other UDP, if DropOther).
	DNSPort uint16
	// ExcludeUID is egressd's own user: its connections go out as they are.
	ExcludeUID uint32
	// DropIPv6 drops the function's IPv6 instead of redirecting it.
	DropIPv6 bool
	// DropOther drops the function's other UDP and ICMP.
	DropOther bool
}

// rule is one rule, as nft would print it and as netlink expressions.
type rule struct {
	chain string
	text  string
	exprs []expr.Any
}

const (
	natChain    = "nat_output"
	filterChain = "filter_output"
)

// rules returns the rules for o, in order.
func rules(o Options) []rule {
	uid := fmt.Sprint(o.ExcludeUID)
	var rs []rule
	for _, chain := range []string{natChain, filterChain} {
		pass := expr.VerdictReturn
		passText := "return"
		if chain == filterChain {
			pass, passText = expr.VerdictAccept, "accept"
		}
		rs = append(rs,
			rule{chain, "meta skuid " + uid + " " + passText, cat(skuid(o.ExcludeUID), verdict(pass))},
			rule{chain, "ip daddr 127.0.0.0/8 " + passText, cat(nfproto(unix.NFPROTO_IPV4), daddr4(127, 8), verdict(pass))},
			rule{chain, "ip6 daddr ::1 " + passText, cat(nfproto(unix.NFPROTO_IPV6), daddr6Loopback(), verdict(pass))},
		)
	}
	redirectFamily := func() []expr.Any { return nil }
	familyText := ""
	if o.DropIPv6 {
		redirectFamily = func() []expr.Any { return nfproto(unix.NFPROTO_IPV4) }
		familyText = "meta nfproto ipv4 "
	}
	if o.DNSPort != 0 {
		// IPv4 only: the DNS listener is on 127.0.0.1. DNS over IPv6 is then UDP that
		// DropOther drops, or TCP that the transparent listener refuses (no name).
		for _, proto := range []struct {
			name string
			num  byte
		}{{"udp", unix.IPPROTO_UDP}, {"tcp", unix.IPPROTO_TCP}} {
			rs = append(rs, rule{natChain, fmt.Sprintf("meta nfproto ipv4 meta l4proto %s th dport 53 redirect to :%d", proto.name, o.DNSPort),
				cat(nfproto(unix.NFPROTO_IPV4), l4proto(proto.num), dport(53), redirect(o.DNSPort))})
		}
	}
	rs = append(rs, rule{natChain, fmt.Sprintf("%smeta l4proto tcp redirect to :%d", familyText, o.ProxyPort),
		cat(redirectFamily(), l4proto(unix.IPPROTO_TCP), redirect(o.ProxyPort))})
	if o.DropIPv6 {
		rs = append(rs, rule{filterChain, "meta nfproto ipv6 drop", cat(nfproto(unix.NFPROTO_IPV6), verdict(expr.VerdictDrop))})
	}
	if o.DropOther {
		for _, p := range []struct {
			name string
			num  byte
		}{{"udp", unix.IPPROTO_UDP}, {"icmp", unix.IPPROTO_ICMP}, {"ipv6-icmp", unix.IPPROTO_ICMPV6}} {
			rs = append(rs, rule{filterChain, "meta l4proto " + p.name + " drop", cat(l4proto(p.num), verdict(expr.VerdictDrop))})
		}
	}
	return rs
}

// Text is the table as nft would print it: what --dry-run shows.
func Text(o Options) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", TableName)
	for _, c := range []struct{ name, head string }{
		{natChain, "type nat hook output priority -100; policy accept;"},
		{filterChain, "type filter hook output priority 0; policy accept;"},
	} {
		fmt.Fprintf(&b, "\tchain %s {\n\t\t%s\n", c.name, c.head)
		for _, r := range rules(o) {
			if r.chain == c.name {
				fmt.Fprintf(&b, "\t\t%s\n", r.text)
			}
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// Apply replaces egressd's table in the current network namespace with the rules
// for o, in one netlink batch: the namespace never has half of them.
func Apply(o Options) error {
	if o.ProxyPort == 0 {
		return errors.New("no transparent listener port: set proxy.transparent_listen, or pass --proxy-port")
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	if old, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet); err == nil && old != nil {
		c.DelTable(old)
	}
	t := c.AddTable(&nftables.Table{Name: TableName, Family: nftables.TableFamilyINet})
	policy := nftables.ChainPolicyAccept
	chains := map[string]*nftables.Chain{
		natChain: c.AddChain(&nftables.Chain{Name: natChain, Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest, Policy: &policy}),
		filterChain: c.AddChain(&nftables.Chain{Name: filterChain, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &policy}),
	}
	for _, r := range rules(o) {
		c.AddRule(&nftables.Rule{Table: t, Chain: chains[r.chain], Exprs: r.exprs})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("installing the nftables rules (egressd netns-setup needs CAP_NET_ADMIN in the pod's network namespace): %w", err)
	}
	return nil
}

// Remove deletes egressd's table; it is no error if there is none.
func Remove() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	t, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet)
	if err != nil || t == nil {
		return nil
	}
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("removing the nftables rules: %w", err)
	}
	return nil
}

// Installed reports whether egressd's table exists in the current namespace.
func Installed() (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, err
	}
	t, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet)
	return err == nil && t != nil, nil
}

func cat(parts ...any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		switch v := p.(type) {
		case []expr.Any:
			out = append(out, v...)
		case expr.Any:
			out = append(out, v)
		}
	}
	return out
}

func skuid(uid uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(uid)},
	}
}

func nfproto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

func l4proto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

// daddr4 matches an IPv4 destination in first/bits (bits a multiple of 8).
func daddr4(first byte, bits int) []expr.Any {
	mask := make([]byte, 4)
	for i := 0; i < bits/8; i++ {
		mask[i] = 0xff
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{first, 0, 0, 0}},
	}
}

func daddr6Loopback() []expr.Any {
	one := make([]byte, 16)
	one[15] = 1
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: one},
	}
}

func dport(p uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(p)},
	}
}

func redirect(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.Redir{RegisterProtoMin: 1},
	}
}

func verdict(k expr.VerdictKind) expr.Any { return &expr.Verdict{Kind: k} }
