package upstream

import (
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
)

// maxRedirects bounds redirect chains; registries use one hop (CDN, regional backend).
const maxRedirects = 5

// send performs req, following redirects itself so that HEAD stays HEAD, Authorization is
// dropped the moment the host changes, and no redirect leads into a network the upstream
// itself does not live in.
func (r *Registry) send(req *http.Request) (*http.Response, error) {
	for hops := 0; ; hops++ {
		resp, err := r.client.Do(req)
		if err != nil {
			return nil, r.unavailable(err, req.Method+" "+req.URL.Host)
		}
		switch resp.StatusCode {
		case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
			http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		default:
			return resp, nil
		}
		loc, err := resp.Location()
		drainClose(resp)
		if err != nil {
			return nil, &Error{Kind: KindUnavailable, Upstream: r.name, Status: resp.StatusCode, Message: "redirect without a usable Location"}
		}
		if hops >= maxRedirects {
			return nil, &Error{Kind: KindUnavailable, Upstream: r.name, Message: fmt.Sprintf("more than %d redirects", maxRedirects)}
		}
		if err := r.allowRedirect(loc); err != nil {
			return nil, err
		}
		next := req.Clone(req.Context())
		next.URL = loc
		next.Host = ""
		if !sameOrigin(req.URL, loc) {
			next.Header.Del("Authorization")
		}
		req = next
	}
}

// sameOrigin compares scheme and host:port: a credential meant for https://a must not go
// to http://a, nor to https://a.cdn.example.
func sameOrigin(a, b *url.URL) bool {
	return strings.EqualFold(a.Scheme, b.Scheme) && strings.EqualFold(a.Host, b.Host)
}

// allowRedirect refuses redirects to non-http(s) URLs, and to loopback, private,
// link-local or unspecified addresses (169.254.169.254, the cloud metadata service, above
// all) unless the upstream's own URL is in such a range (an internal registry).
func (r *Registry) allowRedirect(to *url.URL) error {
	if to.Scheme != "http" && to.Scheme != "https" {
		return &Error{Kind: KindUnavailable, Upstream: r.name, Message: "redirect to a non-http URL refused"}
	}
	if r.base.Scheme == "https" && to.Scheme == "http" {
		return &Error{Kind: KindUnavailable, Upstream: r.name, Message: "redirect from https to plain http refused"}
	}
	if InternalHost(to.Hostname()) && !InternalHost(r.base.Hostname()) {
		return &Error{Kind: KindUnavailable, Upstream: r.name, Message: fmt.Sprintf("redirect to internal address %s refused", to.Hostname())}
	}
	return nil
}

// InternalHost reports whether host is an IP literal (or localhost) in a loopback,
// private, link-local, unspecified or otherwise non-public range.
func InternalHost(host string) bool {
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return true
	}
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil {
		return false
	}
	return InternalAddr(ip)
}

// InternalAddr reports whether ip is not a public unicast address.
func InternalAddr(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsUnspecified() || ip.IsMulticast() || ip.IsInterfaceLocalMulticast() ||
		sharedAddressSpace.Contains(ip)
}

// sharedAddressSpace is RFC 6598 carrier-grade NAT space, internal in practice.
var sharedAddressSpace = netip.MustParsePrefix("100.64.0.0/10")
