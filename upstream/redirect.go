package upstream

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"regcache/internal/hostname"
)

// maxRedirects bounds redirect chains; registries use one hop (CDN, regional backend).
const maxRedirects = 5

// send performs req, following redirects itself so that HEAD stays HEAD, Authorization is
// dropped the moment the host changes, and no redirect leads into a network the upstream
// itself does not live in.
//
// The exchange holds one of the upstream's slots (slots.go) from before the first hop
// until the returned body is read or closed; on error it is given back here.
func (r *Registry) send(req *http.Request) (_ *http.Response, err error) {
	if err := r.acquire(req.Context()); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			r.release()
		}
	}()
	first := req.URL
	for hops := 0; ; hops++ {
		start := time.Now()
		resp, err := r.client.Do(req)
		r.observe(req, resp, start)
		if err != nil {
			return nil, r.unavailable(err, req.Method+" "+req.URL.Host)
		}
		switch resp.StatusCode {
		case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
			http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		default:
			if !sameOrigin(first, req.URL) {
				// Only the host asked first may say how to authenticate: a redirect target
				// (a CDN, or anything an upstream points at) answering 401 with its own
				// Bearer realm would otherwise have the upstream's credentials sent there.
				// It never gets our Authorization anyway, so its challenge is of no use.
				resp.Header.Del("WWW-Authenticate")
			}
			r.holdSlot(resp)
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
		if err := r.allowRedirect(req.Context(), loc); err != nil {
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

// allowRedirect refuses redirects that refuseTarget refuses.
func (r *Registry) allowRedirect(ctx context.Context, to *url.URL) error {
	if why := r.refuseTarget(ctx, to); why != "" {
		return &Error{Kind: KindUnavailable, Upstream: r.name, Message: "redirect refused: " + why}
	}
	return nil
}

// refuseTarget is the one policy for where upstream may send us (a redirect, a token
// realm): it says why to may not be contacted, or "". It refuses non-http(s) URLs, https
// to plain http, numeric host spellings other than a plain IP literal, cloud metadata
// services, and internal addresses of another kind than the upstream's own: a registry on
// loopback may send us to loopback and one in a private network to that network, but
// neither to 169.254.169.254, and a public registry nowhere internal at all.
//
// A host name is checked where its addresses are known. Dialled directly, that is
// guardDial, at connect time; through an HTTP(S) proxy the proxy resolves and dials, so
// the name is resolved here with the same resolver and held to the same rule (allowName).
// The upstream's own host is exempt: the operator named it. Other localhost names are
// refused through a proxy, which would answer them from its own loopback.
func (r *Registry) refuseTarget(ctx context.Context, to *url.URL) string {
	if to.Scheme != "http" && to.Scheme != "https" {
		return "not an http(s) URL"
	}
	if r.base.Scheme == "https" && to.Scheme == "http" {
		return "plain http while the registry is https"
	}
	host := to.Hostname()
	switch {
	case host == "":
		return "no host"
	case hostKey(host) == hostKey(r.base.Hostname()):
		return ""
	case numericHost(host):
		// 2852039166, 0xa9fea9fe, 0251.0376.0251.0376, 169.254.43518: a proxy or libc reads
		// these as 169.254.169.254; no registry is named so.
		return "numeric host " + host
	}
	if c := hostClass(host); c != classPublic && (c != hostClass(r.base.Hostname()) || c == classNowhere || metadataHost(host)) {
		return "internal address " + host
	}
	if _, literal := parseIP(host); literal || !r.viaProxy(to) {
		return ""
	}
	if localhostName(host) {
		// The proxy would resolve it to its own loopback, not the upstream's.
		return "internal name " + host + " through a proxy"
	}
	if err := r.allowName(ctx, host); err != nil {
		return err.Error()
	}
	return ""
}

// viaProxy reports whether a request to u goes through an HTTP(S) proxy (a proxy that
// cannot be determined counts as one: the name is checked either way).
func (r *Registry) viaProxy(u *url.URL) bool {
	p, err := r.proxy(&http.Request{Method: http.MethodGet, URL: u, Host: u.Host, Header: http.Header{}})
	return err != nil || p != nil
}

// numericHost reports a host that is no IP literal netip accepts but that ends in a
// number (hostname.EndsInNumber), which URL parsers, proxies and inet_aton take for an
// IPv4 address. A real top-level domain is never numeric, so no registry name is refused.
func numericHost(host string) bool {
	_, literal := parseIP(host)
	return !literal && hostname.EndsInNumber(host)
}

// parseIP parses an IP literal as a URL host writes it (brackets optional).
func parseIP(host string) (netip.Addr, bool) {
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	return ip, err == nil
}

// netClass sorts hosts by the network they are in, for allowRedirect.
type netClass uint8

const (
	classPublic    netClass = iota // host names and public addresses
	classLoopback                  // this machine
	classPrivate                   // RFC 1918, RFC 4193 (fc00::/7), RFC 6598 (100.64.0.0/10)
	classLinkLocal                 // 169.254.0.0/16, fe80::/10: cloud metadata lives here
	classNowhere                   // unspecified and multicast: never a place to send a request
)

// hostClass classifies an IP literal or localhost; other names count as public, since
// what they resolve to is not known here.
func hostClass(host string) netClass {
	if ip, ok := parseIP(host); ok {
		return netClassOf(ip)
	}
	if localhostName(host) {
		return classLoopback
	}
	return classPublic
}

// netClassOf classifies the address a connection to ip reaches (reachedAddr).
func netClassOf(ip netip.Addr) netClass {
	ip, local := reachedAddr(ip)
	switch {
	case ip.IsLoopback():
		return classLoopback
	case ip.IsPrivate() || sharedAddressSpace.Contains(ip):
		return classPrivate
	case ip.IsLinkLocalUnicast():
		return classLinkLocal
	case ip.IsUnspecified() || ip.IsMulticast() || thisNetwork.Contains(ip):
		return classNowhere
	case local:
		return classPrivate // local-use NAT64: the operator's own gateway
	}
	return classPublic
}

// metadataAddrs are the cloud metadata services, refused even from a registry in the same
// kind of network: AWS/GCP/Azure/OpenStack, AWS over IPv6, Alibaba.
var metadataAddrs = []netip.Addr{
	netip.MustParseAddr("169.254.169.254"), netip.MustParseAddr("fd00:ec2::254"), netip.MustParseAddr("100.100.100.200"),
}

func metadataHost(host string) bool {
	ip, ok := parseIP(host)
	return ok && metadataAddr(ip)
}

func metadataAddr(ip netip.Addr) bool {
	ip, _ = reachedAddr(ip)
	return slices.Contains(metadataAddrs, ip)
}

// InternalHost reports whether host is an IP literal (or localhost) in a loopback,
// private, link-local, unspecified or otherwise non-public range.
func InternalHost(host string) bool {
	return hostClass(host) != classPublic
}

// localhostName reports localhost and *.localhost, which resolvers answer with loopback.
func localhostName(host string) bool {
	host = hostKey(host)
	return host == "localhost" || strings.HasSuffix(host, ".localhost")
}

// InternalAddr reports whether ip is not a public unicast address, including the IPv4
// address an IPv6 address carries (reachedAddr).
func InternalAddr(ip netip.Addr) bool {
	return netClassOf(ip) != classPublic
}

// thisNetwork is 0.0.0.0/8 (RFC 1122), never a host to send a request to.
var thisNetwork = netip.MustParsePrefix("0.0.0.0/8")

// sharedAddressSpace is RFC 6598 carrier-grade NAT space, internal in practice.
var sharedAddressSpace = netip.MustParsePrefix("100.64.0.0/10")
