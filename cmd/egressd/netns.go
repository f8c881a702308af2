package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"

	"github.com/egressd/egressd/intercept"
)

// runNetnsSetup installs (or removes, or prints) the interception rules in the
// network namespace it runs in: a pod's, from an init container with CAP_NET_ADMIN.
func runNetnsSetup(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("netns-setup", "[--config FILE] [--exclude-uid UID] [--ipv6 redirect|drop] [--dry-run | --remove]",
		"Install, in this network namespace, the nftables rules that send every outbound TCP connection to egressd's\n"+
			"transparent listener (proxy.transparent_listen) and DNS to its DNS listener (dns.listen), for every user but\n"+
			"egressd's own; loopback stays untouched. Run once by an init container with CAP_NET_ADMIN", stderr)
	cfgPath := configFlag(fs)
	excludeUID := fs.Uint("exclude-uid", 65532, "egressd's own `UID`: its connections are not redirected")
	ipv6 := fs.String("ipv6", "redirect", "`redirect` IPv6 like IPv4, or drop it")
	dryRun := fs.Bool("dry-run", false, "print the rules, install nothing")
	remove := fs.Bool("remove", false, "remove the rules")
	pos, code, ok := parseFlags(fs, args)
	if !ok {
		return code
	}
	usage := func(msg string) int {
		fmt.Fprintf(stderr, "egressd netns-setup: %s\n", msg)
		return exitUsage
	}
	if len(pos) > 0 {
		return usage(fmt.Sprintf("unexpected argument %q", pos[0]))
	}
	if *ipv6 != "redirect" && *ipv6 != "drop" {
		return usage(fmt.Sprintf("--ipv6 %q: write redirect or drop", *ipv6))
	}
	if *excludeUID > 1<<31 {
		return usage(fmt.Sprintf("--exclude-uid %d is not a user id", *excludeUID))
	}
	if *remove {
		if err := intercept.Remove(); err != nil {
			fmt.Fprintf(stderr, "egressd netns-setup: %v\n", err)
			return exitFail
		}
		fmt.Fprintln(stdout, "removed the egressd table")
		return exitOK
	}
	c, _, err := loadConfig(*cfgPath)
	if err != nil {
		printProblems(stderr, err)
		return exitUsage
	}
	o := intercept.Options{ExcludeUID: uint32(*excludeUID), DropIPv6: *ipv6 == "drop", DropOther: *c.Proxy.TransparentDropOther}
	if o.ProxyPort, err = portOf(c.Proxy.TransparentListen); err != nil || o.ProxyPort == 0 {
		return usage("proxy.transparent_listen is not set (such as 127.0.0.1:15001): there is nothing to redirect to")
	}
	if c.DNS.Listen != "" {
		if o.DNSPort, err = portOf(c.DNS.Listen); err != nil || o.DNSPort == 0 {
			return usage("dns.listen needs a fixed port to redirect DNS to")
		}
	}
	if *dryRun {
		fmt.Fprint(stdout, intercept.Text(o))
		return exitOK
	}
	if err := intercept.Apply(o); err != nil {
		fmt.Fprintf(stderr, "egressd netns-setup: %v\n", err)
		return exitFail
	}
	v6 := "IPv6 redirected like IPv4"
	if o.DropIPv6 {
		v6 = "IPv6 dropped"
	}
	dns := "DNS not redirected (no dns.listen)"
	if o.DNSPort != 0 {
		dns = fmt.Sprintf("DNS to :%d", o.DNSPort)
	}
	fmt.Fprintf(stdout, "installed table inet %s: TCP to :%d, %s, %s, UID %d excluded, other UDP and ICMP %s\n",
		intercept.TableName, o.ProxyPort, dns, v6, o.ExcludeUID, map[bool]string{true: "dropped", false: "let through"}[o.DropOther])
	return exitOK
}

func portOf(addr string) (uint16, error) {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(p, 10, 16)
	return uint16(n), err
}
