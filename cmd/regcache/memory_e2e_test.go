package main

// Memory stays bounded under abuse: 100,000 distinct names upstream does not know cost
// their negative-cache entries (held to max_size) and nothing else per name.

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"regcache/cache"
	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// cacheOf is the cache of a regcache the harness started.
func cacheOf(rc *harness.Instance) *cache.Cache { return rc.Server.(*app).cache }

// TestManyUnknownNames: 100,000 distinct names upstream does not know, asked by 64
// workers at once. Each is answered 404; the coalescing maps are empty afterwards (cache
// Stats and /metrics regcache_upstream_inflight); and the heap grows by less than the
// bound below. Under the race detector (about four times slower) 10,000 names are asked;
// REGCACHE_ABUSE_NAMES sets another count.
//
// The bound: what regcache keeps per name is its negative-cache entry (kept for the whole
// test: negative_ttl 10m), and the cache's accounted cost is held to max_size (3 MiB here,
// full after ~8,000 names). An entry's real heap is ~1.3 times its accounted cost
// (measured: the upstream error it keeps is not in the cost), so the cache may hold up to
// 1.5 x 3 = 4.5 MiB. Everything else is per connection, not per name: 64 client and 64
// upstream connections with their buffers, pools and GC slack, 16 MiB (measured: ~7). A
// bound of 20 MiB fails for anything that keeps more than ~100 bytes per name outside the
// cache over 100,000 names (~1 KiB over 10,000).
func TestManyUnknownNames(t *testing.T) {
	if testing.Short() {
		t.Skip("short: 100,000 requests")
	}
	const (
		workers = 64
		bound   = 20 << 20
	)
	names := int64(100_000)
	if harness.Race {
		names = 10_000
	}
	if v, err := strconv.ParseInt(os.Getenv("REGCACHE_ABUSE_NAMES"), 10, 64); err == nil && v > 0 {
		names = v
	}
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.SetFault(registrytest.OnManifests(registrytest.Status(http.StatusNotFound)))
	rc := startRegcacheWith(t, harness.Config("  max_size: 3MiB\n  negative_ttl: 10m\n", harness.Upstream("reg.test", reg.URL)), harness.Options{Quiet: true})
	// Warm up: connections, pools and the first upstream contact are not growth.
	for i := range 2 * workers {
		rc.Do(t, http.MethodGet, fmt.Sprintf("/v2/warm/app-%d/manifests/latest", i))
	}
	var before, after runtime.MemStats
	harness.Settle(1)
	runtime.ReadMemStats(&before)
	start := time.Now()
	var nextName, notFound atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Pointer[string]
	for range workers {
		wg.Go(func() {
			for {
				i := nextName.Add(1) - 1
				if i >= names || failed.Load() != nil {
					return
				}
				resp, err := rc.Client.Get(fmt.Sprintf("%s/v2/unknown/app-%06d/manifests/latest", rc.URL, i))
				if err != nil {
					msg := err.Error()
					failed.Store(&msg)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusNotFound {
					notFound.Add(1)
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	if msg := failed.Load(); msg != nil {
		t.Fatalf("request failed: %s", *msg)
	}
	harness.Settle(1)
	runtime.ReadMemStats(&after)
	growth := int64(after.HeapInuse) - int64(before.HeapInuse)
	stats := cacheOf(rc).Stats()
	t.Logf("%d distinct unknown names in %v (%.0f/s, %d workers): heap in use %.1f MiB -> %.1f MiB (growth %.1f MiB, bound %d MiB); "+
		"cache holds %.1f MiB of max %d MiB; %d upstream manifest requests",
		names, took.Round(time.Millisecond), float64(names)/took.Seconds(), workers, float64(before.HeapInuse)/(1<<20),
		float64(after.HeapInuse)/(1<<20), float64(growth)/(1<<20), bound>>20, float64(stats.SizeBytes)/(1<<20), stats.MaxBytes>>20,
		reg.Count("GET", "manifest"))
	if notFound.Load() != names {
		t.Errorf("%d of %d answered 404", notFound.Load(), names)
	}
	if growth > bound {
		t.Errorf("heap grew by %.1f MiB for %d unknown names, bound %d MiB", float64(growth)/(1<<20), names, bound>>20)
	}
	// Nothing is left in flight, as the cache and /metrics both say.
	deadline := time.Now().Add(5 * time.Second)
	for cacheOf(rc).Stats().InFlight != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := cacheOf(rc).Stats().InFlight; n != 0 {
		t.Errorf("cache: %d upstream fetches still in flight", n)
	}
	if v := rc.Metric(t, "regcache_upstream_inflight"); v != 0 {
		t.Errorf("regcache_upstream_inflight = %v, want 0", v)
	}
}
