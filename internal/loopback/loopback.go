package loopback

// The proof that no test makes regcache reach beyond loopback: a dialer that dials
// 127.0.0.1 only and records whatever else it was asked for.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
)

// Dialer dials 127.0.0.1 only (with Allow, only the host:port addresses listed)
// and records every other address it is asked for without dialling it. It is a resolver
// too (Options.Resolver): a name is recorded as "dns:<name>", never asked of DNS, and
// resolves to nothing. Its zero value is ready.
type Dialer struct {
	// Allow, when set, narrows what may be dialled to these addresses.
	Allow   []string
	mu      sync.Mutex
	refused []string
	d       net.Dialer
}

// DialContext dials addr if it may be dialled; otherwise it records it and fails.
func (l *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host != "127.0.0.1" || len(l.Allow) > 0 && !slices.Contains(l.Allow, addr) {
		l.record(addr)
		return nil, fmt.Errorf("test dialer: dialling %s refused: only 127.0.0.1 may be dialled", addr)
	}
	return l.d.DialContext(ctx, network, addr)
}

// LookupNetIP records host and resolves it to nothing.
func (l *Dialer) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	l.record("dns:" + host)
	return nil, &net.DNSError{Err: "test resolver resolves nothing", Name: host, IsNotFound: true}
}

func (l *Dialer) record(addr string) {
	l.mu.Lock()
	l.refused = append(l.refused, addr)
	l.mu.Unlock()
}

// Refused returns every address (and "dns:" name) asked for and not dialled, in order.
func (l *Dialer) Refused() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.refused)
}
