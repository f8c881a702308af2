package policy

import (
	"errors"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// URLTarget returns the host and port an absolute-form request for u is for: the
// URL's port, or 80 for http and 443 for https. The host is as written; Decide
// normalizes it.
func URLTarget(u *url.URL) (string, uint16, error) {
	var def uint16
	switch u.Scheme {
	case "http":
		def = 80
	case "https":
		def = 443
	default:
		return "", 0, errors.New("unsupported scheme " + strconv.Quote(u.Scheme) + "; egressd proxies http:// URLs and CONNECT tunnels")
	}
	return SplitTarget(u.Host, def)
}

// SplitTarget splits "host:port" (IPv6 in brackets); def is the port when there is
// none, and zero means a port is required.
func SplitTarget(hostport string, def uint16) (string, uint16, error) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		if def == 0 {
			return "", 0, errors.New("target " + strconv.Quote(hostport) + " has no port; write host:port")
		}
		host = strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]")
		return host, def, nil
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return "", 0, errors.New("invalid port " + strconv.Quote(portStr))
	}
	return host, uint16(port), nil
}
