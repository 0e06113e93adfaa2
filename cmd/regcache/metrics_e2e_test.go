package main

// Metrics and probes: /healthz, /readyz and /metrics, the counters that move with each
// request, and, with client auth on, probes open and /metrics behind auth on the main
// listener or open on metrics_listen.

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

func TestMetricsMoveAndProbes(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	reg.SetFault(registrytest.WithHeaders("RateLimit-Limit", "100;w=21600", "RateLimit-Remaining", "76;w=21600"))
	rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL)))

	if r := rc.Do(t, http.MethodGet, "/healthz"); r.Status != 200 {
		t.Fatalf("/healthz %d", r.Status)
	}
	if r := rc.Do(t, http.MethodGet, "/readyz"); r.Status != 200 {
		t.Fatalf("/readyz %d", r.Status)
	}
	before := rc.Metrics(t)
	for i := 0; i < 3; i++ {
		if r := rc.Do(t, http.MethodHead, "/v2/ghcr.io/team/app/manifests/v1"); r.Status != 200 {
			t.Fatalf("HEAD %d", r.Status)
		}
	}
	rc.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/manifests/nope")
	m := rc.Metrics(t)
	get := func(k string) float64 { return m[k] - before[k] }
	if v := get(`regcache_requests_total{cache="MISS",method="HEAD",route="manifest",status="200"}`); v != 1 {
		t.Fatalf("HEAD MISS counter moved by %v, want 1", v)
	}
	if v := get(`regcache_requests_total{cache="HIT",method="HEAD",route="manifest",status="200"}`); v != 2 {
		t.Fatalf("HEAD HIT counter moved by %v, want 2", v)
	}
	if v := get(`regcache_requests_total{cache="none",method="GET",route="manifest",status="404"}`); v != 1 {
		t.Fatalf("404 counter moved by %v, want 1", v)
	}
	if v := get(`regcache_upstream_requests_total{kind="manifest",method="HEAD",status="200",upstream="ghcr.io"}`); v != 1 {
		t.Fatalf("upstream HEAD counter moved by %v, want 1", v)
	}
	if v := m[`regcache_upstream_ratelimit_remaining{upstream="ghcr.io"}`]; v != 76 {
		t.Fatalf("ratelimit remaining = %v, want 76", v)
	}
	if v := m[`regcache_upstream_ratelimit_limit{upstream="ghcr.io"}`]; v != 100 {
		t.Fatalf("ratelimit limit = %v, want 100", v)
	}
	if m["regcache_cache_size_bytes"] <= 0 {
		t.Fatal("cache size gauge did not move")
	}
	if m[`regcache_request_duration_seconds_count{route="manifest"}`] < 4 {
		t.Fatal("latency histogram did not count the manifest requests")
	}
	if _, ok := m["regcache_coalesced_waiters_total"]; !ok {
		t.Fatal("no coalesced waiters counter")
	}
	if _, ok := m["go_goroutines"]; !ok {
		t.Fatal("no Go runtime metrics")
	}
}

// TestProbesAndMetricsWithAuth: with client auth on, the probes stay open (/readyz shows a
// category, never a secret), /metrics stays behind auth on the main listener, and
// metrics_listen serves it without auth on an address of its own, which stops with the
// main one. Before, /readyz and /metrics answered 401, so a Kubernetes readiness probe never
// passed and Prometheus scraped 401s.
func TestProbesAndMetricsWithAuth(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	static := "static-token-" + strings.Repeat("x", 16)
	authYAML := "auth:\n  tokens: [\"" + static + "\"]\n"

	t.Run("probes are open", func(t *testing.T) {
		rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL))+authYAML)
		for _, path := range []string{"/healthz", "/readyz"} {
			r := rc.Do(t, http.MethodGet, path)
			if r.Status != http.StatusOK {
				t.Errorf("%s without credentials: %d %s, want 200", path, r.Status, r.Body)
			}
			// Open to anyone, so it shows categories only: never a credential.
			if strings.Contains(string(r.Body), static) || strings.Contains(string(r.Body), "static-token") {
				t.Errorf("%s shows the static token: %s", path, r.Body)
			}
		}
		if r := rc.Do(t, http.MethodGet, "/metrics"); r.Status != http.StatusUnauthorized {
			t.Errorf("/metrics on the main listener without credentials: %d, want 401", r.Status)
		}
		if r := rc.Do(t, http.MethodGet, "/metrics", "Authorization", "Bearer "+static); r.Status != http.StatusOK {
			t.Errorf("/metrics on the main listener with the token: %d, want 200", r.Status)
		}
	})

	t.Run("metrics_listen", func(t *testing.T) {
		rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL))+authYAML+"metrics_listen: 127.0.0.1:0\n")
		addr, ok := rc.Logs.Listening("metrics listening")
		if !ok {
			t.Fatalf("no \"metrics listening\" log line in:\n%s", rc.Logs.String())
		}
		if r := rc.Do(t, http.MethodGet, "/metrics"); r.Status != http.StatusUnauthorized {
			t.Errorf("/metrics on the main listener without credentials: %d, want 401", r.Status)
		}
		m := &harness.Instance{URL: "http://" + addr, Client: rc.Client}
		r := m.Do(t, http.MethodGet, "/metrics")
		if r.Status != http.StatusOK || !strings.Contains(string(r.Body), "regcache_requests_total") {
			t.Fatalf("/metrics on metrics_listen: %d %.200s", r.Status, r.Body)
		}
		// Only metrics there: not the registry API, not a way around auth.
		if r := m.Do(t, http.MethodGet, "/v2/"); r.Status != http.StatusNotFound {
			t.Errorf("/v2/ on metrics_listen: %d, want 404", r.Status)
		}
		rc.Stop(t)
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Error("metrics_listen still accepts connections after shutdown")
		}
	})
}
