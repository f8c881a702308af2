package proxy

import (
	"net/http"
	"net/textproto"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// parseCommonPlain parses the common shape of a plain-HTTP head the way
// parsePlain's net/http parser does, at half the cost: the request line
// "METHOD http://... HTTP/1.1", header lines "Name: value" ended by CRLF, one Host,
// none of the headers that net/http's parser treats apart from the rest. For a
// head of any other shape it returns nil and parsePlain asks net/http's parser:
// this one never refuses anything, so it decides nothing net/http would not.
// FuzzParseCommonPlain holds the two to the same request for every head this one
// accepts.
func parseCommonPlain(head []byte) *http.Request {
	// One string for the whole head: the method, the URI and every value are
	// pieces of it, one allocation where net/http's parser makes one per value.
	h := string(head)
	line, rest, ok := cutCRLF(h)
	if !ok {
		return nil
	}
	method, line, ok1 := strings.Cut(line, " ")
	requestURI, proto, ok2 := strings.Cut(line, " ")
	// A method is a token, as a header name is.
	if !ok1 || !ok2 || proto != "HTTP/1.1" || !httpguts.ValidHeaderFieldName(method) ||
		method == http.MethodConnect || !strings.HasPrefix(requestURI, "http://") {
		return nil
	}
	u, err := url.ParseRequestURI(requestURI)
	if err != nil || u.Scheme != "http" || u.Host == "" || isLocalHost(u.Hostname()) {
		return nil
	}
	lines := strings.Count(rest, "\n")
	header := make(http.Header, lines)
	values := make([]string, lines) // each key's first value, as net/http's parser does
	hosts := 0
	for {
		if line, rest, ok = cutCRLF(rest); !ok {
			return nil
		}
		if line == "" {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return nil // a folded line, or space before the first name
		}
		name, value, found := strings.Cut(line, ":")
		value = textproto.TrimString(value)
		if !found || !httpguts.ValidHeaderFieldName(name) || !httpguts.ValidHeaderFieldValue(value) {
			return nil
		}
		// A name already canonical comes back as it is, with no allocation.
		key := textproto.CanonicalMIMEHeaderKey(name)
		switch key {
		case "Host":
			hosts++
			if hosts > 1 || !httpguts.ValidHostHeader(value) {
				return nil
			}
			continue // net/http's parser takes it out of the map
		case "Content-Length", "Transfer-Encoding", "Trailer", "Expect", "Upgrade", "Pragma":
			return nil // a body, a wait, an upgrade, or a header net/http rewrites
		}
		if vv := header[key]; vv != nil {
			header[key] = append(vv, value)
		} else {
			vv, values = values[:1:1], values[1:]
			vv[0] = value
			header[key] = vv
		}
	}
	if hosts != 1 || rest != "" {
		return nil
	}
	return &http.Request{
		Method:     method,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     header,
		Body:       http.NoBody,
		Close:      httpguts.HeaderValuesContainsToken(header["Connection"], "close"),
		Host:       u.Host,
		RequestURI: requestURI,
	}
}

// cutCRLF cuts s at its first line end, which must be CRLF with no CR or LF
// before it.
func cutCRLF(s string) (line, rest string, ok bool) {
	i := strings.IndexByte(s, '\n')
	if i < 1 || s[i-1] != '\r' || strings.IndexByte(s[:i-1], '\r') >= 0 {
		return "", "", false
	}
	return s[:i-1], s[i+1:], true
}
