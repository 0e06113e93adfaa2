package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// Resolver looks host names up; net.DefaultResolver is one. Tests inject their own.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// dialFunc is the shape of net.Dialer.DialContext.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// guardDial wraps dial so that no connection reaches an internal address the upstream did
// not name itself. refuseTarget sees only URLs; a host name that resolves to
// 169.254.169.254 (metadata.google.internal, a rebinding DNS name) is caught here, where
// the address is known, by the same rule refuseTarget applies through a proxy (allowName).
// The name is resolved once, checked, and the checked addresses dialled, so DNS cannot
// change its answer in between.
//
// The upstream's own host and the HTTP(S) proxies the transport was given (each on its
// own port only) are dialled as named: an operator who configured an internal registry or
// proxy meant it.
func (r *Registry) guardDial(next dialFunc, resolver Resolver) dialFunc {
	own := hostKey(r.base.Hostname())
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		if hostKey(host) == own {
			return next(ctx, network, addr)
		} else if _, proxy := r.proxies.Load(proxyKey(host, port)); proxy {
			return next(ctx, network, addr)
		}
		ips, err := r.checkedAddrs(ctx, resolver, host)
		if err != nil {
			return nil, err
		}
		// Every address passed; try them in order, as net.Dialer would.
		var last error
		for _, ip := range ips {
			conn, err := next(ctx, network, net.JoinHostPort(ip.String(), port))
			if err == nil {
				return conn, nil
			}
			last = err
		}
		return nil, last
	}
}

// checkedAddrs is host's addresses, each allowed by allowAddr, or why host is refused: an
// IP literal is checked as it is, a numeric spelling of one is refused, and a name
// resolves to addresses that must all pass. One refused address refuses the name: a
// proxy, or the next dial, may well pick that one.
func (r *Registry) checkedAddrs(ctx context.Context, resolver Resolver, host string) ([]netip.Addr, error) {
	if ip, ok := parseIP(host); ok {
		if err := r.allowAddr(ip); err != nil {
			return nil, fmt.Errorf("connection to %s refused: %w", host, err)
		}
		return []netip.Addr{ip}, nil
	}
	if numericHost(host) {
		return nil, fmt.Errorf("connection to %s refused: a numeric host that is no IP address", host)
	}
	ips, err := resolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(ips) == 0 {
		return nil, &unresolvedError{host: host, err: err}
	}
	for _, ip := range ips {
		if err := r.allowAddr(ip); err != nil {
			return nil, fmt.Errorf("connection to %s (%s) refused: %w", host, ip, err)
		}
	}
	return ips, nil
}

// unresolvedError is a name regcache could not resolve itself.
type unresolvedError struct {
	host string
	err  error
}

func (e *unresolvedError) Error() string {
	if e.err == nil {
		return e.host + " has no address"
	}
	return e.host + " does not resolve here: " + e.err.Error()
}

func (e *unresolvedError) Unwrap() error { return e.err }

// allowName applies checkedAddrs to a target the HTTP(S) proxy will resolve and dial. A
// name regcache cannot resolve itself (only the proxy can) passes only when the operator
// listed it in AllowedHosts; a listed name that does resolve is still checked.
func (r *Registry) allowName(ctx context.Context, host string) error {
	_, err := r.checkedAddrs(ctx, r.resolver, host)
	var unresolved *unresolvedError
	if errors.As(err, &unresolved) {
		if r.allowed[hostKey(host)] {
			return nil
		}
		return fmt.Errorf("%w, and it is not in allowed_hosts", err)
	}
	return err
}

// allowAddr applies refuseTarget's rule to a resolved address: public addresses are fine;
// metadata services, unspecified and multicast addresses never; other internal addresses
// only in the same class as the upstream's own (an IP literal in its URL).
func (r *Registry) allowAddr(ip netip.Addr) error {
	c := netClassOf(ip)
	switch {
	case c == classPublic:
		return nil
	case c == classNowhere || metadataAddr(ip):
		return fmt.Errorf("%s is never a registry", ip)
	case c != hostClass(r.base.Hostname()):
		return fmt.Errorf("%s is internal and the upstream is not", ip)
	}
	return nil
}
