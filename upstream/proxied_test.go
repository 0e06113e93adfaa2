package upstream

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"regcache/internal/loopback"
)

// forwardProxy is an HTTP proxy on loopback that stands for the internet: it records every
// host it is asked for (forward requests and CONNECT alike) with the Authorization it
// carried, and answers from its own table of sites; it never dials anything.
type forwardProxy struct {
	srv   *httptest.Server
	mu    sync.Mutex
	asked []seenAt
	sites map[string]http.HandlerFunc
}

type seenAt struct{ host, auth string }

func newForwardProxy(t *testing.T, sites map[string]http.HandlerFunc) *forwardProxy {
	t.Helper()
	p := &forwardProxy{sites: sites}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.URL.Hostname()
		if r.Method == http.MethodConnect {
			host, _, _ = net.SplitHostPort(r.Host)
		}
		host = hostKey(host) // as DNS: any case, absolute or not
		p.mu.Lock()
		p.asked = append(p.asked, seenAt{host, r.Header.Get("Authorization")})
		p.mu.Unlock()
		site := p.sites[host]
		if r.Method == http.MethodConnect || site == nil {
			http.Error(w, "no such site", http.StatusBadGateway)
			return
		}
		site(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *forwardProxy) seen() []seenAt {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]seenAt(nil), p.asked...)
}

// TestProxiedTargetsObeyTheAddressPolicy: with an HTTP(S) proxy the dial goes to the
// proxy, so the dial guard never sees where a redirect or token realm leads. The policy
// must hold all the same: names are resolved by regcache (the test's resolver) and checked,
// numeric host spellings are refused, unresolvable names only pass when listed in
// AllowedHosts, and neither the refused host nor the upstream's credentials reach the proxy.
func TestProxiedTargetsObeyTheAddressPolicy(t *testing.T) {
	resolver := fakeResolver{
		"metadata.google.internal": {netip.MustParseAddr("169.254.169.254")},
		"rebind.example":           {netip.MustParseAddr("10.0.0.7")},
		"mixed.example":            {netip.MustParseAddr("203.0.113.9"), netip.MustParseAddr("127.0.0.1")},
		"cdn.example":              {netip.MustParseAddr("203.0.113.10")},
	}
	refused := []string{
		"metadata.google.internal",
		"2852039166",          // 169.254.169.254 in decimal
		"0xa9fea9fe",          // ...in hex
		"0251.0376.0251.0376", // ...in octal
		"169.254.43518",       // ...as a short dotted form
		"169.254.169.254",
		"rebind.example",       // resolves to a private address
		"mixed.example",        // one of its addresses is loopback
		"unresolvable.example", // only the proxy could resolve it, and it is not listed
		"METADATA.Google.Internal.",
		"Unresolvable.Example.",
		"169.254.169.254.",
		"[::169.254.169.254]", // IPv6 forms that carry 169.254.169.254
		"[::ffff:169.254.169.254]",
		"[::ffff:0:a9fe:a9fe]",
		"[64:ff9b::a9fe:a9fe]",
		"[64:ff9b:1::a9fe:a9fe]",
		"[2002:a9fe:a9fe::1]",
		"[fd00:ec2::254]",
		"[::1]",
		"x.localhost",
	}
	allowed := []string{"cdn.example", "allowed.example", "CDN.Example", "cdn.example.", "ALLOWED.EXAMPLE.",
		"listed.example", "Listed.Example"} // listed as "Listed.Example." below

	tokenSite := func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "user" || p != "pass" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_, _ = w.Write([]byte(`{"token":"tok"}`))
	}
	site := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			tokenSite(w, r)
			return
		}
		serveManifest(w, r)
	}
	sites := map[string]http.HandlerFunc{}
	for _, h := range append(append([]string{}, refused...), allowed...) {
		sites[hostKey(strings.Trim(h, "[]"))] = site // a refused host that was reached anyway answers, so the test sees it
	}

	for _, mode := range []string{"redirect", "realm"} {
		for _, target := range append(append([]string{}, refused...), allowed...) {
			t.Run(mode+"/"+target, func(t *testing.T) {
				registry := func(w http.ResponseWriter, r *http.Request) {
					switch mode {
					case "redirect":
						if u, p, ok := r.BasicAuth(); !ok || u != "user" || p != "pass" {
							w.Header().Set("WWW-Authenticate", `Basic realm="r"`)
							w.WriteHeader(http.StatusUnauthorized)
							return
						}
						if strings.Contains(r.URL.Path, "/manifests/") {
							http.Redirect(w, r, "http://"+target+"/blob", http.StatusTemporaryRedirect)
						}
					case "realm":
						if r.Header.Get("Authorization") != "Bearer tok" {
							w.Header().Set("WWW-Authenticate", `Bearer realm="http://`+target+`/token",service="s"`)
							w.WriteHeader(http.StatusUnauthorized)
							return
						}
						serveManifest(w, r)
					}
				}
				all := map[string]http.HandlerFunc{"registry.example": registry}
				for k, v := range sites {
					all[k] = v
				}
				proxy := newForwardProxy(t, all)
				proxyURL, _ := url.Parse(proxy.srv.URL)
				var dial loopback.Dialer
				r, err := New(Options{
					Name: "t", URL: "http://registry.example", Username: "user", Password: "pass",
					Timeout: 5 * time.Second, DialContext: dial.DialContext, Resolver: resolver,
					Proxy:        func(*http.Request) (*url.URL, error) { return proxyURL, nil },
					AllowedHosts: []string{"Allowed.Example", "Listed.Example."},
				})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(r.Close)
				_, err = r.GetManifest(context.Background(), "a/b", "v1")
				wantRefused := slices.Contains(refused, target)
				reached := false
				for _, s := range proxy.seen() {
					if s.host == hostKey(strings.Trim(target, "[]")) {
						reached = true
						if wantRefused {
							t.Errorf("the proxy was asked for refused host %s (Authorization %q)", target, s.auth)
						} else if mode == "redirect" && s.auth != "" {
							t.Errorf("the redirect target got Authorization %q", s.auth)
						}
					} else if s.host != "registry.example" {
						t.Errorf("the proxy was asked for %s", s.host)
					}
				}
				if wantRefused {
					if !errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "refused") {
						t.Errorf("got %v, want a refusal", err)
					}
				} else if err != nil || !reached {
					t.Errorf("got %v (proxy reached: %v), want the manifest through %s", err, reached, target)
				}
				if refused := dial.Refused(); len(refused) != 0 {
					t.Errorf("regcache dialled %v; only the proxy may be dialled", refused)
				}
			})
		}
	}
}
