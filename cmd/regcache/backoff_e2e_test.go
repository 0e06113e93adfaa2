package main

// While upstream fails, a cached tag costs it at most one request per backoff, whatever
// the clients' pace, and every client still gets the right digest at once; after enough
// failures in a row the upstream's breaker answers every request without asking it, one
// probe per backoff. Both end when upstream answers again.

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// TestBackoffWhileUpstreamFails is the scenario at a tenth of its time: with
// tag_ttl 30s and error_backoff 5s, upstream answering 500 (and then refusing connections)
// for 60 s and a client asking one cached tag 10 times a second, every answer is 200 with
// the right digest and upstream sees at most 4 requests for the tag (at 0, 5, 15 and 35 s,
// then every 30); then upstream recovers, is retagged, and the first revalidation after
// the backoff serves the new digest. Here tag_ttl is 3s, error_backoff 500ms and the
// failure 6 s (3 s of 500s, 3 s of refused connections), the client still asks every
// 100 ms: upstream is asked at 0, 0.5, 1.5 and 3.5 s, then every 3 s (the next at 6.5 s,
// after recovery). The breaker (5 failures in a row) is not reached: one tag fails 4 times.
func TestBackoffWhileUpstreamFails(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	const repo, tag = "backoff/app", "latest"
	old := reg.PushIndex(t, repo, tag, types.OCIImageIndex, "linux/amd64", "linux/arm64/v8")
	const ttl, backoff, failure, every = 3 * time.Second, 500 * time.Millisecond, 6 * time.Second, 100 * time.Millisecond
	dial := &upstreamDialer{upstream: reg.Host}
	t.Cleanup(func() {
		if f := dial.Refused(); len(f) > 0 {
			t.Errorf("regcache tried to dial %v; only 127.0.0.1 may be dialled", f)
		}
	})
	rc := startRegcacheWith(t, harness.Config("  tag_ttl: 3s\n  error_backoff: 500ms\n", harness.Upstream("reg.test", reg.URL)),
		harness.Options{Dial: dial.DialContext})
	path := "/v2/reg.test/" + repo + "/manifests/" + tag

	// Every manifest request upstream takes (500s included), and every one it refuses, in
	// time order.
	var mu sync.Mutex
	var asked []time.Time
	reg.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		asked = append(asked, time.Now())
		mu.Unlock()
		return false
	})
	harness.ExpectManifest(t, "warm", rc.Do(t, "GET", path), "MISS", old, "GET")
	time.Sleep(ttl + 100*time.Millisecond)

	mu.Lock()
	asked = nil
	mu.Unlock()
	reg.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		asked = append(asked, time.Now())
		mu.Unlock()
		return registrytest.Status(http.StatusInternalServerError)(w, r)
	})
	start := time.Now()
	refusedBefore := dial.downDials.Load()
	var refusals []time.Time // when the dialer refused, sampled by the client loop
	answers := 0
	for tick := start; time.Since(start) < failure; tick = tick.Add(every) {
		time.Sleep(time.Until(tick))
		if time.Since(start) >= failure/2 && !dial.down.Load() {
			dial.setDown(true) // the second half: connections refused
		}
		r := rc.Do(t, "GET", path)
		harness.ExpectManifest(t, fmt.Sprintf("answer %d, %v into the failure", answers, time.Since(start).Round(time.Millisecond)), r, "STALE", old, "GET")
		answers++
		if n := dial.downDials.Load() - refusedBefore; int(n) > len(refusals) {
			refusals = append(refusals, time.Now())
		}
	}
	mu.Lock()
	upstreamTimes := append(slices.Clone(asked), refusals...)
	mu.Unlock()
	refused := int(dial.downDials.Load() - refusedBefore)
	slices.SortFunc(upstreamTimes, func(a, b time.Time) int { return a.Compare(b) })
	var at []string
	for _, u := range upstreamTimes {
		at = append(at, u.Sub(start).Round(10*time.Millisecond).String())
	}
	t.Logf("%d answers in %v; upstream asked at %v (%d of them refused connections)", answers, failure, at, refused)
	if n := len(asked) + refused; n > 4 || n < 3 {
		t.Fatalf("upstream was asked %d times for the tag in %v (at %v); want at most 4 (and at least 3: once each backoff)", n, failure, at)
	}
	if len(refusals) != refused {
		t.Fatalf("%d refused dials, %d seen by the client loop", refused, len(refusals))
	}
	// Each request came no sooner than the backoff after the one before: 0.5, 1, 2 s.
	for i := 1; i < len(upstreamTimes); i++ {
		if gap, want := upstreamTimes[i].Sub(upstreamTimes[i-1]), backoff<<(i-1); gap < want-every {
			t.Fatalf("upstream asked %v after the previous request (at %v); the backoff was %v", gap, at, want)
		}
	}
	if n := rc.Metric(t, `regcache_stale_backoff_total{upstream="reg.test"}`); int(n) < answers-4 {
		t.Fatalf("regcache_stale_backoff_total = %v for %d stale answers", n, answers)
	}
	if n := rc.Metric(t, `regcache_upstream_breaker_open{upstream="reg.test"}`); n != 0 {
		t.Fatalf("the breaker opened for one tag's 4 failures")
	}

	// Upstream recovers and is retagged. Until the backoff set by the last failure (3 s)
	// has passed, the old digest is served without asking; the first revalidation after it
	// serves the new one.
	cur := reg.PushImage(t, repo, tag, types.DockerManifestSchema2)
	reg.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		asked = append(asked, time.Now())
		mu.Unlock()
		return false
	})
	dial.setDown(false)
	last := upstreamTimes[len(upstreamTimes)-1]
	mu.Lock()
	asked = nil
	mu.Unlock()
	for tick := time.Now(); ; tick = tick.Add(every) {
		time.Sleep(time.Until(tick))
		r := rc.Do(t, "GET", path)
		if r.Header.Get("X-Cache") == "STALE" {
			harness.ExpectManifest(t, "stale answer before the backoff passed", r, "STALE", old, "GET")
			if time.Since(last) > ttl+5*time.Second {
				t.Fatalf("still stale %v after the last failure; the backoff was %v", time.Since(last).Round(time.Millisecond), ttl)
			}
			continue
		}
		harness.ExpectManifest(t, "first answer after the backoff", r, "MISS", cur, "GET")
		if since := time.Since(last); since < ttl-every {
			t.Fatalf("the new digest came %v after the last failure, inside its %v backoff", since, ttl)
		}
		break
	}
	mu.Lock()
	n := len(asked)
	mu.Unlock()
	if n != 2 { // HEAD: moved; GET of the new manifest by digest
		t.Fatalf("the revalidation after recovery cost %d upstream requests, want 2", n)
	}
	harness.ExpectManifest(t, "then", rc.Do(t, "GET", path), "HIT", cur, "GET")
}

// TestBreakerAnswersAtOnce: 50 cached tags on a dead upstream, each asked once. The first
// failures_to_open (5) go upstream and fail; then the breaker is open and the other 45 are
// answered stale at once, never waiting on upstream (a black-holed upstream holds each of
// the first five for its 1 s timeout), and a tag not cached is 503 UNAVAILABLE with
// Retry-After, at once. After the breaker's backoff one request goes upstream as the probe
// (50 more client requests, one upstream request); once upstream is back, the next probe
// closes the breaker.
func TestBreakerAnswersAtOnce(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"refused", "black hole"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			testBreakerAnswersAtOnce(t, mode == "black hole")
		})
	}
}

func testBreakerAnswersAtOnce(t *testing.T, blackHole bool) {
	reg := registrytest.New(t, registrytest.NoAuth)
	const repo, tags = "breaker/app", 50
	img := reg.PushImage(t, repo, "t0", types.OCIManifestSchema1)
	for i := 1; i < tags; i++ {
		reg.PutManifest(t, repo, "t"+strconv.Itoa(i), img.MediaType, img.Body)
	}
	const ttl, backoff, timeout = 3 * time.Second, 1500 * time.Millisecond, time.Second
	dial := &upstreamDialer{upstream: reg.Host}
	dial.blackHole.Store(blackHole)
	t.Cleanup(func() {
		if f := dial.Refused(); len(f) > 0 {
			t.Errorf("regcache tried to dial %v; only 127.0.0.1 may be dialled", f)
		}
	})
	// revalidate_wait past the upstream timeout: without the breaker, every client would
	// wait out the black hole.
	rc := startRegcacheWith(t, harness.Config("  tag_ttl: 3s\n  error_backoff: 1500ms\n  revalidate_wait: 5s\n",
		harness.Upstream("reg.test", reg.URL, "timeout: 1s")), harness.Options{Dial: dial.DialContext, Quiet: true})
	path := func(i int) string { return "/v2/reg.test/" + repo + "/manifests/t" + strconv.Itoa(i) }
	for i := range tags {
		harness.ExpectManifest(t, "warm", rc.Do(t, "GET", path(i)), "MISS", img, "GET")
	}
	time.Sleep(ttl + 100*time.Millisecond)

	dial.setDown(true)
	var opened time.Time
	for i := range tags {
		r, took := rc.Timed(t, "GET", path(i))
		harness.ExpectManifest(t, fmt.Sprintf("tag %d on a dead upstream", i), r, "STALE", img, "GET")
		switch {
		case i < 5:
			opened = time.Now()
		case took > timeout/2:
			t.Fatalf("tag %d, with the breaker open, answered after %v: waiting on upstream", i, took)
		}
	}
	if n := dial.downDials.Load(); n != 5 && time.Since(opened) < backoff {
		t.Fatalf("50 stale answers cost %d upstream dials; want the 5 that opened the breaker", n)
	}
	r, took := rc.Timed(t, "GET", "/v2/reg.test/"+repo+"/manifests/never-cached")
	if code := harness.ExpectError(t, "an uncached tag with the breaker open", r, "GET", http.StatusServiceUnavailable); code != "UNAVAILABLE" {
		t.Fatalf("uncached tag: %s, want UNAVAILABLE", code)
	}
	if ra, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 2 {
		t.Fatalf("uncached tag: Retry-After %q, want the next probe's (1-2 s)", r.Header.Get("Retry-After"))
	}
	if took > timeout/2 {
		t.Fatalf("uncached tag answered after %v", took)
	}
	m := rc.Metrics(t)
	if m[`regcache_upstream_breaker_open{upstream="reg.test"}`] != 1 || m[`regcache_upstream_backoff_seconds{upstream="reg.test"}`] != backoff.Seconds() {
		t.Fatalf("breaker metrics while open: open=%v backoff=%v", m[`regcache_upstream_breaker_open{upstream="reg.test"}`], m[`regcache_upstream_backoff_seconds{upstream="reg.test"}`])
	}

	// The backoff passes: one request probes, the rest are answered at once; the probe
	// fails and the backoff doubles (to tag_ttl).
	time.Sleep(time.Until(opened.Add(backoff + 100*time.Millisecond)))
	before := dial.downDials.Load()
	probed := time.Now()
	for i := range tags {
		r, took := rc.Timed(t, "GET", path(i))
		harness.ExpectManifest(t, fmt.Sprintf("tag %d after the backoff", i), r, "STALE", img, "GET")
		if took > timeout/2 && took < timeout/2*3 && blackHole {
			continue // the probe, held by the black hole
		}
		if took > timeout/2 {
			t.Fatalf("tag %d after the backoff answered after %v", i, took)
		}
	}
	if n := dial.downDials.Load() - before; n != 1 && time.Since(probed) < 2*backoff {
		t.Fatalf("50 requests after the backoff cost %d upstream dials; want the one probe", n)
	}
	if b := rc.Metric(t, `regcache_upstream_backoff_seconds{upstream="reg.test"}`); b != ttl.Seconds() {
		t.Fatalf("backoff after a failed probe: %v s, want %v (doubled, capped at tag_ttl)", b, ttl.Seconds())
	}

	// Upstream is back: the first request after the backoff probes, succeeds and closes the
	// breaker.
	dial.setDown(false)
	time.Sleep(time.Until(probed.Add(ttl + timeout + 100*time.Millisecond)))
	for i := tags - 1; ; i-- { // the last tags' own backoffs were set by no failure of theirs
		r := rc.Do(t, "GET", path(i))
		if r.Header.Get("X-Cache") == "REVALIDATED" {
			harness.ExpectManifest(t, "after recovery", r, "REVALIDATED", img, "GET")
			break
		}
		harness.ExpectManifest(t, "after recovery, still held", r, "STALE", img, "GET")
		if i < tags-5 {
			t.Fatal("no tag revalidated after upstream came back")
		}
	}
	if n := rc.Metric(t, `regcache_upstream_breaker_open{upstream="reg.test"}`); n != 0 {
		t.Fatal("the breaker stayed open after a successful probe")
	}
}
