package upstream

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// fakeResolver answers from a table; no DNS query leaves the test.
type fakeResolver map[string][]netip.Addr

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if ips, ok := f[hostKey(host)]; ok { // as DNS: any case, absolute or not
		return ips, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// recordingDialer records every address it is asked for and connects to none.
type recordingDialer struct {
	mu    sync.Mutex
	addrs []string
}

func (d *recordingDialer) DialContext(_ context.Context, _, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.addrs = append(d.addrs, addr)
	d.mu.Unlock()
	return nil, errors.New("recording dialer connects nowhere")
}

func TestGuardDialRefusesNamesThatResolveInside(t *testing.T) {
	resolver := fakeResolver{
		"metadata.google.internal": {netip.MustParseAddr("169.254.169.254")},
		"rebind.example":           {netip.MustParseAddr("10.0.0.7")},
		"mixed.example":            {netip.MustParseAddr("169.254.169.254"), netip.MustParseAddr("203.0.113.9")},
		"cdn.example":              {netip.MustParseAddr("203.0.113.10")},
		"registry.internal":        {netip.MustParseAddr("10.1.2.3")},
		// IPv6 answers that carry the metadata address
		"compat.example": {netip.MustParseAddr("::169.254.169.254")},
		"siit.example":   {netip.MustParseAddr("::ffff:0:a9fe:a9fe")},
		"nat64.example":  {netip.MustParseAddr("64:ff9b::a9fe:a9fe")},
		"6to4.example":   {netip.MustParseAddr("2002:a9fe:a9fe::1")},
		"dns64.example":  {netip.MustParseAddr("64:ff9b::cb00:710a")}, // 203.0.113.10 through NAT64
	}
	cases := []struct {
		base, target string
		wantDial     string // "" means refused
	}{
		{"https://ghcr.io", "metadata.google.internal:80", ""},
		{"https://ghcr.io", "rebind.example:443", ""},
		{"https://ghcr.io", "169.254.169.254:80", ""},
		{"https://ghcr.io", "[::]:443", ""},
		// One internal address refuses the name: through a proxy, regcache cannot choose
		// which address gets dialled, and the policy is the same with and without one.
		{"https://ghcr.io", "mixed.example:443", ""},
		// Numeric spellings of 169.254.169.254 are no names to look up.
		{"https://ghcr.io", "2852039166:80", ""},
		{"https://ghcr.io", "0xa9fea9fe:80", ""},
		{"https://ghcr.io", "169.254.169.254.:80", ""},
		{"https://ghcr.io", "cdn.example:443", "203.0.113.10:443"},
		// IPv6 literals and answers that carry an IPv4 address are held to its rule.
		{"https://ghcr.io", "[::169.254.169.254]:80", ""},
		{"https://ghcr.io", "[::ffff:0:a9fe:a9fe]:80", ""},
		{"https://ghcr.io", "[64:ff9b::a9fe:a9fe]:80", ""},
		{"https://ghcr.io", "[64:ff9b:1::a9fe:a9fe]:80", ""},
		{"https://ghcr.io", "[2002:a9fe:a9fe::1]:80", ""},
		{"https://ghcr.io", "compat.example:80", ""},
		{"https://ghcr.io", "siit.example:80", ""},
		{"https://ghcr.io", "nat64.example:80", ""},
		{"https://ghcr.io", "6to4.example:80", ""},
		{"http://169.254.10.10:5000", "nat64.example:80", ""},
		{"http://10.1.2.3:5000", "[64:ff9b:1::a9fe:a9fe]:80", ""},
		{"https://ghcr.io", "dns64.example:443", "[64:ff9b::cb00:710a]:443"},
		// The upstream's own host is dialled as named, whatever it resolves to.
		{"https://registry.internal", "registry.internal:443", "registry.internal:443"},
		// A registry named by a private literal may send us within the private range...
		{"http://10.1.2.3:5000", "rebind.example:80", "10.0.0.7:80"},
		// ...but never to the metadata service.
		{"http://10.1.2.3:5000", "metadata.google.internal:80", ""},
		{"http://127.0.0.1:5000", "127.0.0.1:6000", "127.0.0.1:6000"},
		{"http://127.0.0.1:5000", "rebind.example:80", ""},
	}
	for _, tc := range cases {
		var d recordingDialer
		r, err := New(Options{Name: "t", URL: tc.base, DialContext: d.DialContext, Resolver: resolver})
		if err != nil {
			t.Fatal(err)
		}
		_, err = r.client.Transport.(*http.Transport).DialContext(context.Background(), "tcp", tc.target)
		switch {
		case tc.wantDial == "" && len(d.addrs) != 0:
			t.Errorf("%s -> %s: dialled %v, want refused", tc.base, tc.target, d.addrs)
		case tc.wantDial == "" && (err == nil || !strings.Contains(err.Error(), "refused")):
			t.Errorf("%s -> %s: err %v, want a refusal", tc.base, tc.target, err)
		case tc.wantDial != "" && (len(d.addrs) != 1 || d.addrs[0] != tc.wantDial):
			t.Errorf("%s -> %s: dialled %v, want %s", tc.base, tc.target, d.addrs, tc.wantDial)
		}
	}
}

// TestGuardDialTrustsProxiesByHostAndPort: the proxies the transport was given are dialled
// as named, but only on their own port: a redirect to the proxy's name on another port
// (its host's SSH, Redis, admin page) is a target like any other.
func TestGuardDialTrustsProxiesByHostAndPort(t *testing.T) {
	resolver := fakeResolver{"proxy.internal": {netip.MustParseAddr("10.0.0.5")}}
	for _, tc := range []struct {
		proxy, target string
		dialled       bool
	}{
		{"http://proxy.internal:3128", "proxy.internal:3128", true},
		{"http://PROXY.internal:3128", "proxy.INTERNAL:3128", true},
		{"http://proxy.internal:3128", "proxy.internal:6379", false},
		{"http://proxy.internal", "proxy.internal:80", true}, // the scheme's port
		{"http://proxy.internal", "proxy.internal:443", false},
		{"https://proxy.internal", "proxy.internal:443", true},
	} {
		var d recordingDialer
		proxyURL, _ := url.Parse(tc.proxy)
		r, err := New(Options{Name: "t", URL: "https://ghcr.io", DialContext: d.DialContext, Resolver: resolver,
			Proxy: func(*http.Request) (*url.URL, error) { return proxyURL, nil }})
		if err != nil {
			t.Fatal(err)
		}
		tr := r.client.Transport.(*http.Transport)
		req, _ := http.NewRequest(http.MethodGet, "https://ghcr.io/v2/", nil)
		if _, err := tr.Proxy(req); err != nil { // as the transport does before dialling
			t.Fatal(err)
		}
		_, err = tr.DialContext(context.Background(), "tcp", tc.target)
		switch {
		case tc.dialled && (len(d.addrs) != 1 || d.addrs[0] != tc.target):
			t.Errorf("proxy %s, dial %s: dialled %v, want it dialled as named", tc.proxy, tc.target, d.addrs)
		case !tc.dialled && (len(d.addrs) != 0 || err == nil || !strings.Contains(err.Error(), "refused")):
			t.Errorf("proxy %s, dial %s: dialled %v (%v), want refused", tc.proxy, tc.target, d.addrs, err)
		}
	}
}
