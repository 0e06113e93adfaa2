package main

// End-to-end tests of the rate-limit guard (upstream/ratelimit.go): after a 429 to a
// manifest GET no manifest GET reaches upstream until the retry time while HEADs go on;
// after a 429 to a HEAD nothing does. Meanwhile stale answers are served and uncached
// requests get 429 TOOMANYREQUESTS with Retry-After. Helpers come from cache_e2e_test.go.

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// rlExpect429 checks a 429 TOOMANYREQUESTS answer whose Retry-After is 1..max seconds.
func rlExpect429(t *testing.T, what string, r harness.Response, method string, max int) {
	t.Helper()
	code := ceError(t, what, r, method, http.StatusTooManyRequests)
	if method == http.MethodGet && code != "TOOMANYREQUESTS" {
		t.Fatalf("%s: code %s, want TOOMANYREQUESTS", what, code)
	}
	ra, err := strconv.Atoi(r.Header.Get("Retry-After"))
	if err != nil || ra < 1 || ra > max {
		t.Fatalf("%s: Retry-After %q, want 1..%d seconds", what, r.Header.Get("Retry-After"), max)
	}
}

// rlWithin fails when the phase that began at start has run past the hold it tests.
func rlWithin(t *testing.T, what string, start time.Time, hold time.Duration) {
	t.Helper()
	if d := time.Since(start); d >= hold {
		t.Fatalf("%s took %v, longer than the %v hold it checks; the checks above prove nothing", what, d, hold)
	}
}

func TestRateLimitE2EGuard(t *testing.T) {
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
	up := ceWatchRegistry(reg)
	path := func(ref string) string { return "/v2/reg.test/" + repo + "/manifests/" + ref }

	ceExpect(t, "warm", rc.Do(t, "GET", path("warm")), "MISS", warm, "GET")
	time.Sleep(ttl + 100*time.Millisecond) // warm is stale from here on

	// 1. One manifest GET answers 429 with Retry-After: 2; the client gets upstream's 429.
	up.set(registrytest.Once(registrytest.OnMethod(http.MethodGet, registrytest.OnManifests(registrytest.RateLimited(hold)))))
	up.reset()
	start := time.Now()
	rlExpect429(t, "the GET upstream limits", rc.Do(t, "GET", path("first")), "GET", 2)
	armed := time.Now() // the hold ends at most 2 s after this
	up.expectUpstream(t, "the GET upstream limits", ceManifests("GET", repo, "first"))

	// 2. For the next 2 s: cold GETs are answered 429 here, and never reach upstream.
	up.reset()
	rlExpect429(t, "cold GET during the GET hold", rc.Do(t, "GET", path("cold-get")), "GET", 2)
	rlExpect429(t, "cold GET by digest during the GET hold", rc.Do(t, "GET", path(img["cold-get"].Digest)), "GET", 2)
	up.expectUpstream(t, "cold GETs during the GET hold")
	// A cold HEAD goes on: Docker Hub's pull limit spares HEADs.
	ceExpect(t, "cold HEAD during the GET hold", rc.Do(t, "HEAD", path("cold-head")), "MISS", img["cold-head"], "HEAD")
	up.expectUpstream(t, "cold HEAD during the GET hold", ceManifests("HEAD", repo, "cold-head"))
	// The tag is now known but its body is not: the GET by digest it needs is held back.
	up.reset()
	rlExpect429(t, "GET of a HEAD-only tag during the GET hold", rc.Do(t, "GET", path("cold-head")), "GET", 2)
	up.expectUpstream(t, "GET of a HEAD-only tag during the GET hold")
	// The stale tag revalidates with a free HEAD and its body comes from memory.
	ceExpect(t, "stale GET during the GET hold", rc.Do(t, "GET", path("warm")), "REVALIDATED", warm, "GET")
	up.expectUpstream(t, "stale GET during the GET hold", ceManifests("HEAD", repo, "warm"))
	rlWithin(t, "the GET-hold phase", start, hold)

	// 3. After the retry time GETs flow again.
	time.Sleep(time.Until(armed.Add(hold + 100*time.Millisecond)))
	up.reset()
	ceExpect(t, "cold GET after the GET hold", rc.Do(t, "GET", path("cold-get")), "MISS", img["cold-get"], "GET")
	up.expectUpstream(t, "cold GET after the GET hold", ceManifests("GET", repo, "cold-get"))
	ceExpect(t, "HEAD-only tag GET after the GET hold", rc.Do(t, "GET", path("cold-head")), "", img["cold-head"], "GET")

	// 4. A 429 to a HEAD holds everything back.
	time.Sleep(ttl + 100*time.Millisecond) // warm is stale again
	up.set(registrytest.Once(registrytest.OnMethod(http.MethodHead, registrytest.OnManifests(registrytest.RateLimited(hold)))))
	up.reset()
	start = time.Now()
	rlExpect429(t, "the HEAD upstream limits", rc.Do(t, "HEAD", path("head-429")), "HEAD", 2)
	armed = time.Now()
	up.expectUpstream(t, "the HEAD upstream limits", ceManifests("HEAD", repo, "head-429"))
	up.reset()
	rlExpect429(t, "cold HEAD during the HEAD hold", rc.Do(t, "HEAD", path("held")), "HEAD", 2)
	rlExpect429(t, "cold GET during the HEAD hold", rc.Do(t, "GET", path("held")), "GET", 2)
	ceExpect(t, "stale GET during the HEAD hold", rc.Do(t, "GET", path("warm")), "STALE", warm, "GET")
	ceExpect(t, "stale HEAD during the HEAD hold", rc.Do(t, "HEAD", path("warm")), "STALE", warm, "HEAD")
	up.expectUpstream(t, "during the HEAD hold")
	if n := reg.Total(); n != 0 {
		t.Fatalf("%d requests of any kind reached upstream during the HEAD hold, want 0", n)
	}
	rlWithin(t, "the HEAD-hold phase", start, hold)

	// 5. After its retry time everything flows again.
	time.Sleep(time.Until(armed.Add(hold + 100*time.Millisecond)))
	up.reset()
	ceExpect(t, "cold HEAD after the HEAD hold", rc.Do(t, "HEAD", path("held")), "MISS", img["held"], "HEAD")
	ceExpect(t, "stale GET after the HEAD hold", rc.Do(t, "GET", path("warm")), "REVALIDATED", warm, "GET")
	up.expectUpstream(t, "after the HEAD hold", ceManifests("HEAD", repo, "held"), ceManifests("HEAD", repo, "warm"))
	ceExpect(t, "GET after the HEAD hold", rc.Do(t, "GET", path("held")), "MISS", img["held"], "GET")
}

// Docker Hub's RateLimit headers on ordinary answers change nothing a client sees (the
// guard records them; upstream's TestRateLimitGuardAgainstRegistry reads them back), and a
// 429 to a tags page holds tags back, and only tags while the headers say pulls remain.
func TestRateLimitE2EHeadersPassAndTags429(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	const repo = "limited/tags"
	p := reg.PushImage(t, repo, "v1", types.DockerManifestSchema2)
	rc := startRegcache(t, harness.Config("", harness.Upstream("reg.test", reg.URL)))
	up := ceWatchRegistry(reg)
	hub := registrytest.WithHeaders("ratelimit-limit", "100;w=21600", "ratelimit-remaining", "76;w=21600")
	up.set(hub)
	r := rc.Do(t, "GET", "/v2/reg.test/"+repo+"/manifests/v1")
	ceExpect(t, "GET with Docker Hub headers upstream", r, "MISS", p, "GET")

	tags429 := registrytest.Once(func(w http.ResponseWriter, req *http.Request) bool {
		return req.Method == http.MethodGet && strings.HasSuffix(req.URL.Path, "/tags/list") && registrytest.RateLimited(2*time.Second)(w, req)
	})
	up.set(registrytest.Chain(hub, tags429))
	tagsPath := "/v2/reg.test/" + repo + "/tags/list"
	rlExpect429(t, "tags page upstream limits", rc.Do(t, "GET", tagsPath+"?n=1"), "GET", 2)
	up.reset()
	rlExpect429(t, "tags page during the hold", rc.Do(t, "GET", tagsPath+"?n=2"), "GET", 2)
	if n := reg.Count(http.MethodGet, "tags"); n != 0 {
		t.Fatalf("%d tags requests reached upstream during the hold a tags 429 set, want 0", n)
	}
	ceError(t, "HEAD of a missing tag during the tags hold", rc.Do(t, "HEAD", "/v2/reg.test/"+repo+"/manifests/v2"), "HEAD", http.StatusNotFound)
	if n := reg.Count(http.MethodHead, "manifest"); n != 1 {
		t.Fatalf("%d HEADs reached upstream during a tags hold, want 1", n)
	}
}
