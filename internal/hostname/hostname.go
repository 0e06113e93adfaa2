// Package hostname holds the host name rule that both the configuration (allowed_hosts)
// and the upstream address policy apply, so the two cannot drift apart.
package hostname

import "strings"

// EndsInNumber reports a host whose last label is a number, as the WHATWG URL parser,
// proxies and inet_aton read one: all decimal digits (octal with a leading 0), or 0x
// followed by hex digits. Such a host is taken for an IPv4 address, whole or in fewer than
// four parts (2852039166, 0xa9fea9fe, 169.254.43518 are all 169.254.169.254), never for a
// name: no top-level domain is numeric. A trailing dot ("169.254.169.254.") changes nothing.
// IP literals end in a number too; callers that accept them check for them first.
func EndsInNumber(host string) bool {
	host = strings.TrimSuffix(host, ".")
	last := host[strings.LastIndexByte(host, '.')+1:]
	if len(last) > 1 && (last[:2] == "0x" || last[:2] == "0X") {
		return strings.Trim(last[2:], "0123456789abcdefABCDEF") == ""
	}
	return last != "" && strings.Trim(last, "0123456789") == ""
}
