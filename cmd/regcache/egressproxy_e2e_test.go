package main

// Behind an HTTP(S) proxy from the environment: redirect targets are held to the same
// address policy as without one (upstreams[].allowed_hosts names the outside hosts that
// only the proxy can resolve), and refused hosts never reach the proxy.

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/internal/loopback"
	"regcache/upstream/registrytest"
)

// TestEgressProxyAllowedHosts: behind an HTTP proxy that alone resolves outside names, a
// redirect to such a name is refused unless the upstream lists it in allowed_hosts, and a
// numeric spelling of the metadata address is refused whatever the list says. Refused
// hosts never reach the proxy. The proxy stands for the internet: it forwards the one
// listed name to the test registry and dials nothing else.
func TestEgressProxyAllowedHosts(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	regURL, _ := url.Parse(reg.URL)
	var mu sync.Mutex
	var asked []string
	forward := httputil.NewSingleHostReverseProxy(regURL)
	egress := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.Method+" "+r.URL.Host)
		mu.Unlock()
		if r.URL.Hostname() != "blobs.proxy-only.example" {
			http.Error(w, "the test proxy reaches nothing else", http.StatusBadGateway)
			return
		}
		forward.ServeHTTP(w, r)
	}))
	t.Cleanup(egress.Close)
	egressURL, _ := url.Parse(egress.URL)
	// The registry itself is reached directly (as NO_PROXY would have it); all else goes
	// through the proxy.
	proxy := func(r *http.Request) (*url.URL, error) {
		if r.URL.Host == reg.Host {
			return nil, nil
		}
		return egressURL, nil
	}
	dial := &loopback.Dialer{Allow: []string{reg.Host, egressURL.Host}}
	bo := harness.Options{Dial: dial.DialContext, Resolver: dial, Proxy: proxy}
	listed := startRegcacheWith(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL, "allowed_hosts: [blobs.proxy-only.example]")), bo)
	unlisted := startRegcacheWith(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL)), bo)

	for i, tc := range []struct {
		rc     *harness.Instance
		target string
		ok     bool
	}{
		{unlisted, "blobs.proxy-only.example", false},
		{listed, "2852039166", false},
		{listed, "0xa9fea9fe", false},
		{listed, "blobs.proxy-only.example", true},
	} {
		img := reg.PushImage(t, "team/app", fmt.Sprintf("t%d", i), types.OCIManifestSchema1) // nothing cached
		target := tc.target
		reg.SetFault(registrytest.Once(registrytest.OnManifests(func(w http.ResponseWriter, r *http.Request) bool {
			http.Redirect(w, r, "http://"+target+r.URL.Path, http.StatusTemporaryRedirect)
			return true
		})))
		r := tc.rc.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/manifests/"+img.Digest)
		if got := r.Status == http.StatusOK; got != tc.ok {
			t.Errorf("redirect to %s: %d %s, want ok=%v", target, r.Status, r.Body, tc.ok)
		}
		if !tc.ok && !strings.Contains(string(r.Body), "refused") {
			t.Errorf("redirect to %s: %s, want it refused", target, r.Body)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(asked) != 1 || asked[0] != "GET blobs.proxy-only.example" {
		t.Fatalf("the proxy was asked for %q; only the listed host may reach it", asked)
	}
}
