package main

// It keeps answering when upstream fails: an expired tag is served stale (X-Cache: STALE)
// while upstream errs, drops connections or rate-limits, a slow upstream holds a client at
// most revalidate_wait, and a tag that moved while its new manifest is refused keeps
// answering the one it pointed to; with the fault gone, regcache is fresh again by itself.

import (
	"bytes"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// Stale-if-error: with an expired tag cached, upstream 500, 429 and dropped
// connections are covered by the stale answer; with nothing cached they are registry
// errors; without the fault regcache is fresh again by itself. Each fault is met afresh:
// the tag's backoff (capped at tag_ttl) is waited out between them, and the breaker is
// kept out of it (backoff_e2e_test.go is about both).
func TestStaleIfError(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	const repo = "stale/app"
	warm := reg.PushIndex(t, repo, "warm", types.OCIImageIndex, "linux/amd64", "linux/arm64/v8")
	cold := reg.PushImage(t, repo, "cold", types.DockerManifestSchema2)
	const ttl = 300 * time.Millisecond
	rc := startRegcache(t, harness.Config("  tag_ttl: 300ms\n", harness.Upstream("reg.test", reg.URL, "failures_to_open: 100")))
	up := harness.Record(reg)
	path := func(ref string) string { return "/v2/reg.test/" + repo + "/manifests/" + ref }

	harness.ExpectManifest(t, "warm", rc.Do(t, "GET", path("warm")), "MISS", warm, "GET")
	time.Sleep(ttl + 100*time.Millisecond)

	for _, tc := range []struct {
		name       string
		fault      registrytest.Fault
		statuses   []int
		code       string // alternatives split by |
		retryAfter string
	}{
		{"500", registrytest.Status(http.StatusInternalServerError), []int{502}, "UPSTREAM_FAILED", ""},
		{"connection closed", registrytest.CloseConnection(), []int{502, 503}, "UPSTREAM_FAILED|UNAVAILABLE", ""},
		// Last: a 429 holds every request back until its Retry-After (upstream/ratelimit.go).
		{"429", registrytest.RateLimited(2 * time.Second), []int{429}, "TOOMANYREQUESTS", "2"},
	} {
		time.Sleep(ttl) // the last fault's backoff
		up.Set(registrytest.OnManifests(tc.fault))
		up.Reset()
		for _, m := range []string{"GET", "HEAD"} {
			harness.ExpectManifest(t, tc.name+": stale "+m, rc.Do(t, m, path("warm")), "STALE", warm, m)
		}
		if reg.Count("GET", "manifest")+reg.Count("HEAD", "manifest") == 0 {
			t.Fatalf("%s: the stale answers were given without trying upstream", tc.name)
		}
		for _, m := range []string{"GET", "HEAD"} {
			r := rc.Do(t, m, path("cold"))
			code := harness.ExpectError(t, tc.name+": cold "+m, r, m, tc.statuses...)
			if m == "GET" && !slices.Contains(strings.Split(tc.code, "|"), code) {
				t.Fatalf("%s: cold GET code %s, want %s", tc.name, code, tc.code)
			}
			if got := r.Header.Get("Retry-After"); got != tc.retryAfter {
				t.Fatalf("%s: cold %s Retry-After %q, want %q", tc.name, m, got, tc.retryAfter)
			}
		}
	}

	// Fault gone: after tag_ttl and the 429's Retry-After the next answer is a fresh one,
	// with no operator action.
	up.Set(nil)
	time.Sleep(max(ttl, 2*time.Second) + 100*time.Millisecond)
	up.Reset()
	harness.ExpectManifest(t, "recovered GET", rc.Do(t, "GET", path("warm")), "REVALIDATED", warm, "GET")
	up.ExpectManifests(t, "recovered GET", harness.ManifestRequest("HEAD", repo, "warm"))
	r := rc.Do(t, "HEAD", path("warm"))
	if x := r.Header.Get("X-Cache"); x != "HIT" && x != "REVALIDATED" {
		t.Fatalf("after recovery HEAD X-Cache %q", x)
	}
	harness.ExpectManifest(t, "recovered HEAD", r, "", warm, "HEAD")
	harness.ExpectManifest(t, "recovered cold GET", rc.Do(t, "GET", path("cold")), "MISS", cold, "GET")
}

// A slow upstream holds a client with a stale answer at most revalidate_wait; the
// revalidation goes on in the background and refreshes the cache.
func TestSlowUpstreamServesStaleAndRefreshesInBackground(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	const repo = "slow/app"
	old := reg.PushImage(t, repo, "t", types.OCIManifestSchema1)
	const ttl, delay = 500 * time.Millisecond, 1500 * time.Millisecond
	rc := startRegcache(t, harness.Config("  tag_ttl: 500ms\n  revalidate_wait: 200ms\n", harness.Upstream("reg.test", reg.URL)))
	up := harness.Record(reg)
	path := "/v2/reg.test/" + repo + "/manifests/t"

	harness.ExpectManifest(t, "warm", rc.Do(t, "GET", path), "MISS", old, "GET")
	// Retag upstream, so that what the background revalidation stores is recognisable.
	cur := reg.PushImage(t, repo, "t", types.DockerManifestSchema2)
	time.Sleep(ttl + 100*time.Millisecond)

	up.Set(registrytest.OnManifests(registrytest.Delay(delay)))
	up.Reset()
	start := time.Now()
	r, took := rc.Timed(t, "GET", path)
	harness.ExpectManifest(t, "stale GET while upstream is slow", r, "STALE", old, "GET")
	if took > delay*2/3 {
		t.Fatalf("stale GET took %v; revalidate_wait is 200ms and upstream takes %v", took, delay)
	}
	r, took = rc.Timed(t, "HEAD", path)
	harness.ExpectManifest(t, "second stale HEAD while upstream is slow", r, "STALE", old, "HEAD")
	if took > delay*2/3 {
		t.Fatalf("stale HEAD took %v", took)
	}
	if time.Since(start) < delay*4/5 {
		// Still inside the first revalidation: the second client joined it.
		up.ExpectManifests(t, "two stale clients", harness.ManifestRequest("HEAD", repo, "t"))
	}
	// Later requests are fast again; the one in flight keeps its delay.
	up.Set(nil)

	// Until the slow HEAD lands, clients keep getting the stale answer (quickly). The first
	// answer with the retagged digest comes without any new upstream request: the background
	// revalidation found and stored it. (A client that happened to be waiting on it when it
	// landed is told MISS: the answer came from upstream while it waited.)
	time.Sleep(time.Until(start.Add(delay + 100*time.Millisecond)))
	for deadline := time.Now().Add(10 * time.Second); ; {
		if time.Now().After(deadline) {
			t.Fatalf("background revalidation never refreshed the cache; upstream saw %q", up.Manifests())
		}
		r, took := rc.Timed(t, "HEAD", path)
		if took > delay*2/3 {
			t.Fatalf("HEAD while waiting for the background revalidation took %v", took)
		}
		if r.Header.Get("X-Cache") == "STALE" {
			harness.ExpectManifest(t, "stale HEAD", r, "STALE", old, "HEAD")
			time.Sleep(50 * time.Millisecond)
			continue
		}
		harness.ExpectManifest(t, "first answer after the background revalidation", r, "", cur, "HEAD")
		want := []string{harness.ManifestRequest("HEAD", repo, "t")}
		switch x := r.Header.Get("X-Cache"); x {
		case "HIT", "MISS":
		case "REVALIDATED": // a loaded machine let the refreshed entry expire already
			want = append(want, harness.ManifestRequest("HEAD", repo, "t"))
		default:
			t.Fatalf("first answer after the background revalidation: X-Cache %q", x)
		}
		up.ExpectManifests(t, "background revalidation", want...)
		if since := time.Since(start); since < delay*9/10 {
			t.Fatalf("refreshed after %v, before upstream could have answered", since)
		}
		break
	}
	r, took = rc.Timed(t, "HEAD", path)
	if x := r.Header.Get("X-Cache"); x != "HIT" && x != "REVALIDATED" {
		t.Fatalf("after the background revalidation: X-Cache %q, want HIT or REVALIDATED", x)
	}
	harness.ExpectManifest(t, "after the background revalidation", r, "", cur, "HEAD")
	if took > delay*2/3 {
		t.Fatalf("HEAD after the background revalidation took %v", took)
	}
	harness.ExpectManifest(t, "GET after refresh", rc.Do(t, "GET", path), "", cur, "GET")
}

// A tag that moved while the GET for its new manifest is refused (Docker Hub: the HEAD is
// free, the GET is what the pull limit refuses) still answers, with the old manifest.
func TestMovedTagServesPreviousWhenNewBodyRefused(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	old := reg.PushImage(t, "library/nginx", "latest", types.DockerManifestSchema2)
	rc := startRegcache(t, harness.Config("  tag_ttl: 100ms\n", harness.Upstream("docker.io", reg.URL)))
	if r := rc.Do(t, http.MethodGet, "/v2/nginx/manifests/latest"); r.Status != 200 || !bytes.Equal(r.Body, old.Body) {
		t.Fatalf("warm: %d", r.Status)
	}
	reg.PushImage(t, "library/nginx", "latest", types.DockerManifestSchema2)
	time.Sleep(150 * time.Millisecond)
	reg.SetFault(registrytest.OnMethod(http.MethodGet, registrytest.OnManifests(registrytest.RateLimited(30*time.Second))))
	for i := 0; i < 3; i++ {
		r := rc.Do(t, http.MethodGet, "/v2/nginx/manifests/latest")
		if r.Status != 200 || r.Header.Get("X-Cache") != "STALE" || !bytes.Equal(r.Body, old.Body) ||
			r.Header.Get("Docker-Content-Digest") != old.Digest {
			t.Fatalf("GET %d after the move: %d %q %s", i, r.Status, r.Header.Get("X-Cache"), r.Body)
		}
	}
}

// A tag that moved while upstream refuses GETs (Docker Hub: the HEAD that shows the move
// is free, the GET is what the pull limit refuses, for hours) keeps answering with the
// manifest it pointed to before: right after the move, once tag_ttl has passed again and
// the moved tag revalidates unchanged, and when that revalidation is slower than
// revalidate_wait. (TestMovedTagServesPreviousWhenNewBodyRefused asks within one tag_ttl.)
func TestMovedTagRateLimitedPastTagTTL(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	old := reg.PushImage(t, "library/nginx", "latest", types.DockerManifestSchema2)
	rc := startRegcache(t, harness.Config("  tag_ttl: 100ms\n  revalidate_wait: 300ms\n", harness.Upstream("docker.io", reg.URL)))
	if r := rc.Do(t, http.MethodGet, "/v2/nginx/manifests/latest"); r.Status != http.StatusOK {
		t.Fatalf("warm: %d", r.Status)
	}
	reg.PushImage(t, "library/nginx", "latest", types.DockerManifestSchema2)
	refuseGET := registrytest.OnMethod(http.MethodGet, registrytest.OnManifests(registrytest.RateLimited(30*time.Second)))
	previous := func(what string) {
		t.Helper()
		r := rc.Do(t, http.MethodGet, "/v2/nginx/manifests/latest")
		if r.Status != http.StatusOK || r.Header.Get("X-Cache") != "STALE" || !bytes.Equal(r.Body, old.Body) ||
			r.Header.Get("Docker-Content-Digest") != old.Digest {
			t.Fatalf("%s: %d %q %s", what, r.Status, r.Header.Get("X-Cache"), r.Body)
		}
	}
	time.Sleep(150 * time.Millisecond)
	reg.SetFault(refuseGET)
	previous("GET after the move")
	time.Sleep(150 * time.Millisecond) // past tag_ttl: the moved tag revalidates, unchanged
	previous("GET after tag_ttl, the tag unchanged since the move")
	time.Sleep(150 * time.Millisecond)
	reg.SetFault(registrytest.Chain(refuseGET, registrytest.OnMethod(http.MethodHead, registrytest.OnManifests(registrytest.Delay(time.Second)))))
	previous("GET after tag_ttl, the revalidation slower than revalidate_wait")
}
