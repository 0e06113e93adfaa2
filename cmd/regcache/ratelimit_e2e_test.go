package main

// End-to-end tests of the rate-limit guard (upstream/ratelimit.go): after a 429 to a
// manifest GET no manifest GET reaches upstream until the retry time while HEADs go on;
// after a 429 to a HEAD nothing does. Meanwhile stale answers are served and uncached
// requests get 429 TOOMANYREQUESTS with Retry-After.

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// withinHold fails when the phase that began at start has run past the hold it tests.
func withinHold(t *testing.T, what string, start time.Time, hold time.Duration) {
	t.Helper()
	if d := time.Since(start); d >= hold {
		t.Fatalf("%s took %v, longer than the %v hold it checks; the checks above prove nothing", what, d, hold)
	}
}

func TestRateLimitGuard(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	const repo = "limited/app"
	const ttl = 300 * time.Millisecond
	const hold = 2 * time.Second
	warm := reg.PushIndex(t, repo, "warm", types.OCIImageIndex, "linux/amd64", "linux/arm64/v8")
	img := map[string]registrytest.Pushed{}
	for _, tag := range []string{"first", "cold-get", "cold-head", "head-429", "held"} {
		img[tag] = reg.PushImage(t, repo, tag, types.DockerManifestSchema2)
	}
	rc := startRegcache(t, harness.Config("  tag_ttl: 300ms\n", harness.Upstream("reg.test", reg.URL)))
	up := harness.Record(reg)
	path := func(ref string) string { return "/v2/reg.test/" + repo + "/manifests/" + ref }

	harness.ExpectManifest(t, "warm", rc.Do(t, "GET", path("warm")), "MISS", warm, "GET")
	time.Sleep(ttl + 100*time.Millisecond) // warm is stale from here on

	// 1. One manifest GET answers 429 with Retry-After: 2; the client gets upstream's 429.
	up.Set(registrytest.Once(registrytest.OnMethod(http.MethodGet, registrytest.OnManifests(registrytest.RateLimited(hold)))))
	up.Reset()
	start := time.Now()
	harness.ExpectRateLimited(t, "the GET upstream limits", rc.Do(t, "GET", path("first")), "GET", 2)
	armed := time.Now() // the hold ends at most 2 s after this
	up.ExpectManifests(t, "the GET upstream limits", harness.ManifestRequest("GET", repo, "first"))

	// 2. For the next 2 s: cold GETs are answered 429 here, and never reach upstream.
	up.Reset()
	harness.ExpectRateLimited(t, "cold GET during the GET hold", rc.Do(t, "GET", path("cold-get")), "GET", 2)
	harness.ExpectRateLimited(t, "cold GET by digest during the GET hold", rc.Do(t, "GET", path(img["cold-get"].Digest)), "GET", 2)
	up.ExpectManifests(t, "cold GETs during the GET hold")
	// A cold HEAD goes on: Docker Hub's pull limit spares HEADs.
	harness.ExpectManifest(t, "cold HEAD during the GET hold", rc.Do(t, "HEAD", path("cold-head")), "MISS", img["cold-head"], "HEAD")
	up.ExpectManifests(t, "cold HEAD during the GET hold", harness.ManifestRequest("HEAD", repo, "cold-head"))
	// The tag is now known but its body is not: the GET by digest it needs is held back.
	up.Reset()
	harness.ExpectRateLimited(t, "GET of a HEAD-only tag during the GET hold", rc.Do(t, "GET", path("cold-head")), "GET", 2)
	up.ExpectManifests(t, "GET of a HEAD-only tag during the GET hold")
	// The stale tag revalidates with a free HEAD and its body comes from memory.
	harness.ExpectManifest(t, "stale GET during the GET hold", rc.Do(t, "GET", path("warm")), "REVALIDATED", warm, "GET")
	up.ExpectManifests(t, "stale GET during the GET hold", harness.ManifestRequest("HEAD", repo, "warm"))
	withinHold(t, "the GET-hold phase", start, hold)

	// 3. After the retry time GETs flow again.
	time.Sleep(time.Until(armed.Add(hold + 100*time.Millisecond)))
	up.Reset()
	harness.ExpectManifest(t, "cold GET after the GET hold", rc.Do(t, "GET", path("cold-get")), "MISS", img["cold-get"], "GET")
	up.ExpectManifests(t, "cold GET after the GET hold", harness.ManifestRequest("GET", repo, "cold-get"))
	harness.ExpectManifest(t, "HEAD-only tag GET after the GET hold", rc.Do(t, "GET", path("cold-head")), "", img["cold-head"], "GET")

	// 4. A 429 to a HEAD holds everything back.
	time.Sleep(ttl + 100*time.Millisecond) // warm is stale again
	up.Set(registrytest.Once(registrytest.OnMethod(http.MethodHead, registrytest.OnManifests(registrytest.RateLimited(hold)))))
	up.Reset()
	start = time.Now()
	harness.ExpectRateLimited(t, "the HEAD upstream limits", rc.Do(t, "HEAD", path("head-429")), "HEAD", 2)
	armed = time.Now()
	up.ExpectManifests(t, "the HEAD upstream limits", harness.ManifestRequest("HEAD", repo, "head-429"))
	up.Reset()
	harness.ExpectRateLimited(t, "cold HEAD during the HEAD hold", rc.Do(t, "HEAD", path("held")), "HEAD", 2)
	harness.ExpectRateLimited(t, "cold GET during the HEAD hold", rc.Do(t, "GET", path("held")), "GET", 2)
	harness.ExpectManifest(t, "stale GET during the HEAD hold", rc.Do(t, "GET", path("warm")), "STALE", warm, "GET")
	harness.ExpectManifest(t, "stale HEAD during the HEAD hold", rc.Do(t, "HEAD", path("warm")), "STALE", warm, "HEAD")
	up.ExpectManifests(t, "during the HEAD hold")
	if n := reg.Total(); n != 0 {
		t.Fatalf("%d requests of any kind reached upstream during the HEAD hold, want 0", n)
	}
	withinHold(t, "the HEAD-hold phase", start, hold)

	// 5. After its retry time everything flows again.
	time.Sleep(time.Until(armed.Add(hold + 100*time.Millisecond)))
	up.Reset()
	harness.ExpectManifest(t, "cold HEAD after the HEAD hold", rc.Do(t, "HEAD", path("held")), "MISS", img["held"], "HEAD")
	harness.ExpectManifest(t, "stale GET after the HEAD hold", rc.Do(t, "GET", path("warm")), "REVALIDATED", warm, "GET")
	up.ExpectManifests(t, "after the HEAD hold", harness.ManifestRequest("HEAD", repo, "held"), harness.ManifestRequest("HEAD", repo, "warm"))
	harness.ExpectManifest(t, "GET after the HEAD hold", rc.Do(t, "GET", path("held")), "MISS", img["held"], "GET")
}

// Docker Hub's RateLimit headers on ordinary answers change nothing a client sees (the
// guard records them; upstream's TestRateLimitGuardAgainstRegistry reads them back), and a
// 429 to a tags page holds tags back, and only tags while the headers say pulls remain.
func TestRateLimitHeadersPassAndTags429(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	const repo = "limited/tags"
	p := reg.PushImage(t, repo, "v1", types.DockerManifestSchema2)
	rc := startRegcache(t, harness.Config("", harness.Upstream("reg.test", reg.URL)))
	up := harness.Record(reg)
	hub := registrytest.WithHeaders("ratelimit-limit", "100;w=21600", "ratelimit-remaining", "76;w=21600")
	up.Set(hub)
	r := rc.Do(t, "GET", "/v2/reg.test/"+repo+"/manifests/v1")
	harness.ExpectManifest(t, "GET with Docker Hub headers upstream", r, "MISS", p, "GET")

	tags429 := registrytest.Once(func(w http.ResponseWriter, req *http.Request) bool {
		return req.Method == http.MethodGet && strings.HasSuffix(req.URL.Path, "/tags/list") && registrytest.RateLimited(2*time.Second)(w, req)
	})
	up.Set(registrytest.Chain(hub, tags429))
	tagsPath := "/v2/reg.test/" + repo + "/tags/list"
	harness.ExpectRateLimited(t, "tags page upstream limits", rc.Do(t, "GET", tagsPath+"?n=1"), "GET", 2)
	up.Reset()
	harness.ExpectRateLimited(t, "tags page during the hold", rc.Do(t, "GET", tagsPath+"?n=2"), "GET", 2)
	if n := reg.Count(http.MethodGet, "tags"); n != 0 {
		t.Fatalf("%d tags requests reached upstream during the hold a tags 429 set, want 0", n)
	}
	harness.ExpectError(t, "HEAD of a missing tag during the tags hold", rc.Do(t, "HEAD", "/v2/reg.test/"+repo+"/manifests/v2"), "HEAD", http.StatusNotFound)
	if n := reg.Count(http.MethodHead, "manifest"); n != 1 {
		t.Fatalf("%d HEADs reached upstream during a tags hold, want 1", n)
	}
}
