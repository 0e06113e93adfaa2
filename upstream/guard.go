package upstream

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
)

// Resolver looks host names up; net.DefaultResolver is one. Tests inject their own.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// dialFunc is the shape of net.Dialer.DialContext.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// guardDial wraps dial so that no connection reaches an internal address the upstream did
// not name itself. allowRedirect and the realm check see only URLs; a host name that
// resolves to 169.254.169.254 (metadata.google.internal, a rebinding DNS name) is caught
// here, where the address is known. The name is resolved once, checked, and the checked
// address dialled, so DNS cannot change its answer in between.
//
// The upstream's own host and the HTTP(S) proxy from the environment are dialled as named:
// an operator who configured an internal registry or proxy meant it.
func (r *Registry) guardDial(next dialFunc, resolver Resolver) dialFunc {
	trusted := map[string]bool{strings.ToLower(r.base.Hostname()): true}
	for _, v := range []string{"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"} {
		if u, err := url.Parse(os.Getenv(v)); err == nil && u.Hostname() != "" {
			trusted[strings.ToLower(u.Hostname())] = true
		}
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		if trusted[strings.ToLower(host)] {
			return next(ctx, network, addr)
		}
		var ips []netip.Addr
		if ip, err := netip.ParseAddr(host); err == nil {
			ips = []netip.Addr{ip}
		} else if ips, err = resolver.LookupNetIP(ctx, "ip", host); err != nil {
			return nil, err
		}
		var refused error
		for _, ip := range ips {
			if err := r.allowAddr(ip); err != nil {
				refused = fmt.Errorf("connection to %s (%s) refused: %w", host, ip, err)
				continue
			}
			return next(ctx, network, net.JoinHostPort(ip.String(), port))
		}
		if refused == nil {
			refused = fmt.Errorf("%s has no address", host)
		}
		return nil, refused
	}
}

// allowAddr applies refuseTarget's rule to a resolved address: public addresses are fine;
// metadata services, unspecified and multicast addresses never; other internal addresses
// only in the same class as the upstream's own (an IP literal in its URL).
func (r *Registry) allowAddr(ip netip.Addr) error {
	c := hostClass(ip.String())
	switch {
	case c == classPublic:
		return nil
	case c == classNowhere || metadataHost(ip.String()):
		return fmt.Errorf("%s is never a registry", ip)
	case c != hostClass(r.base.Hostname()):
		return fmt.Errorf("%s is internal and the upstream is not", ip)
	}
	return nil
}
