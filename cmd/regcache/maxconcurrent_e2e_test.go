package main

// upstreams[].max_concurrent: at most that many exchanges are open at an upstream; a miss
// that finds no slot in time gets 503 UNAVAILABLE with Retry-After (or a stale answer),
// and cached answers never queue behind the misses.

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// TestPendingMissesAreBounded: many concurrent misses on distinct names against a slow
// upstream never have more than max_concurrent requests open at the upstream; the misses
// that find no free slot in time get 503 UNAVAILABLE with Retry-After, and a cached tag
// keeps answering fast meanwhile.
func TestPendingMissesAreBounded(t *testing.T) {
	t.Parallel()
	const (
		bound   = 4
		clients = 40
		slow    = 1500 * time.Millisecond
	)
	reg := registrytest.New(t, registrytest.Bearer)
	img := reg.PushImage(t, "team/app", "cached", types.OCIManifestSchema1)
	// timeout 8s: a miss waits for a slot a quarter of it, 2s, so the first 4 misses get
	// slots at once, the next 4 when those finish (1.5s), and the rest are turned away;
	// none runs into the timeout itself. tag_ttl 1s makes the tag stale before the load;
	// revalidate_wait 20s means only a failed revalidation serves it stale.
	rc := startRegcache(t, harness.Config("  revalidate_wait: 20s\n",
		harness.Upstream("ghcr.io", reg.URL, "max_concurrent: 4", "timeout: 8s", "tag_ttl: 1s")))
	hit := "/v2/ghcr.io/team/app/manifests/" + img.Digest // a digest never goes stale
	for _, path := range []string{hit, "/v2/ghcr.io/team/app/manifests/cached"} {
		if r := rc.Do(t, http.MethodGet, path); r.Status != http.StatusOK {
			t.Fatalf("warming %s: %d %s", path, r.Status, r.Body)
		}
	}
	time.Sleep(1100 * time.Millisecond)

	var open, most atomic.Int64
	reg.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		n := open.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		if strings.Contains(r.URL.Path, "/manifests/") {
			select {
			case <-time.After(slow):
			case <-r.Context().Done():
			}
		}
		open.Add(-1) // before the answer goes out: regcache cannot free the slot sooner
		return false
	})

	statuses := make([]int, clients)
	retryAfter := make([]string, clients)
	bodies := make([]string, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			r := rc.Do(t, http.MethodGet, fmt.Sprintf("/v2/ghcr.io/team/app/manifests/miss-%d", i))
			statuses[i], retryAfter[i], bodies[i] = r.Status, r.Header.Get("Retry-After"), string(r.Body)
		})
	}
	// Hits while the misses wait: answered from the cache, never queued behind them.
	time.Sleep(300 * time.Millisecond)
	var stale harness.Response
	wg.Go(func() {
		// A stale tag's revalidation finds the bound full like any miss; the failure is
		// an upstream failure like any other, so the stale answer is served.
		stale = rc.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/manifests/cached")
	})
	for range 3 {
		start := time.Now()
		r := rc.Do(t, http.MethodGet, hit)
		if took := time.Since(start); r.Status != http.StatusOK || r.Header.Get("X-Cache") != "HIT" || took > time.Second {
			t.Errorf("hit during the load: %d %s in %v, want a fast 200 HIT", r.Status, r.Header.Get("X-Cache"), took)
		}
		time.Sleep(200 * time.Millisecond)
	}
	wg.Wait()
	if stale.Status != http.StatusOK || stale.Header.Get("X-Cache") != "STALE" {
		t.Errorf("stale tag during the load: %d %s %s, want 200 STALE", stale.Status, stale.Header.Get("X-Cache"), stale.Body)
	}

	if m := most.Load(); m > bound {
		t.Errorf("%d requests were open at the upstream at once, want at most %d", m, bound)
	}
	busy := 0
	for i, s := range statuses {
		switch s {
		case http.StatusNotFound: // got a slot: upstream said the tag does not exist
		case http.StatusServiceUnavailable:
			busy++
			if retryAfter[i] == "" || !strings.Contains(bodies[i], `"UNAVAILABLE"`) {
				t.Errorf("503 without Retry-After (%q) or UNAVAILABLE: %s", retryAfter[i], bodies[i])
			}
		default:
			t.Errorf("miss %d: %d %s", i, s, bodies[i])
		}
	}
	if busy == 0 || busy == clients {
		t.Errorf("%d of %d misses got 503; want the bound to turn some, not all, away", busy, clients)
	}
	// Each 503 was counted, and so was the stale tag's revalidation if it found no slot.
	if n := rc.Metrics(t)[`regcache_upstream_busy_total{upstream="ghcr.io"}`]; n < float64(busy) || n > float64(busy+1) {
		t.Errorf("regcache_upstream_busy_total = %v, want the %d misses turned away (and at most the revalidation)", n, busy)
	}
	t.Logf("most open at upstream %d, 503s %d of %d", most.Load(), busy, clients)
}
