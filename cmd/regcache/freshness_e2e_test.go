package main

// Freshness by tag and on the wire: tag_ttl_rules give matching tags their own TTL (first
// match, an upstream's rules before the cache's), and answers say how old they are (Age,
// and the digest API's fetchedAt, ageSeconds and ttlSeconds).

import (
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

func TestTTLRulesByTag(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	reg.PushImage(t, "team/app", "edge", types.OCIManifestSchema1)
	stable := reg.PushImage(t, "team/app", "1.2.3", types.OCIManifestSchema1)
	// edge: the upstream's rule (300ms) wins over the cache's catch-all (1h); 1.2.3: the
	// cache's first rule (1h); tag_ttl (the fallback) would be 1 s.
	rc := startRegcache(t, harness.Config("  tag_ttl: 1s\n  tag_ttl_rules:\n    - match: '^\\d+\\.\\d+\\.\\d+$'\n      ttl: 1h\n"+
		"    - match: '.*'\n      ttl: 1h\n",
		harness.Upstream("reg.test", reg.URL, "tag_ttl_rules:", "  - match: '^edge$'", "    ttl: 300ms")))
	head := func(tag string) harness.Response {
		t.Helper()
		r := rc.Do(t, http.MethodHead, "/v2/reg.test/team/app/manifests/"+tag)
		if r.Status != http.StatusOK {
			t.Fatalf("HEAD %s: %d", tag, r.Status)
		}
		return r
	}
	head("edge")
	head("1.2.3")
	if r := head("edge"); r.Header.Get("X-Cache") != "HIT" {
		t.Fatalf("edge within its 300ms: %s; want HIT", r.Header.Get("X-Cache"))
	}
	movedEdge := reg.PushImage(t, "team/app", "edge", types.OCIManifestSchema1)
	reg.PushImage(t, "team/app", "1.2.3", types.OCIManifestSchema1)
	time.Sleep(400 * time.Millisecond) // past edge's 300ms, well within 1.2.3's hour
	// edge was asked within its window, so it may have been refreshed ahead (HIT) or be
	// revalidated now (MISS): either way, the move.
	if r := head("edge"); r.Header.Get("Docker-Content-Digest") != movedEdge.Digest {
		t.Fatalf("edge after its TTL: %s %s; want the move", r.Header.Get("X-Cache"), r.Header.Get("Docker-Content-Digest"))
	}
	if r := head("1.2.3"); r.Header.Get("Docker-Content-Digest") != stable.Digest || r.Header.Get("X-Cache") != "HIT" {
		t.Fatalf("1.2.3 within its TTL: %s %s; want the cached digest", r.Header.Get("X-Cache"), r.Header.Get("Docker-Content-Digest"))
	}

	// The digest API says which TTL applied.
	for tag, want := range map[string]int64{"edge": 1, "1.2.3": 3600} { // 300ms rounds up
		r := rc.Do(t, http.MethodGet, "/api/v1/digest?image=reg.test/team/app:"+tag)
		var res struct {
			FetchedAt  string `json:"fetchedAt"`
			AgeSeconds *int64 `json:"ageSeconds"`
			TTLSeconds *int64 `json:"ttlSeconds"`
		}
		if err := json.Unmarshal(r.Body, &res); err != nil || res.TTLSeconds == nil || res.AgeSeconds == nil || res.FetchedAt == "" {
			t.Fatalf("digest API for %s: %v %s", tag, err, r.Body)
		}
		if *res.TTLSeconds != want {
			t.Fatalf("digest API for %s: ttlSeconds %d, want %d", tag, *res.TTLSeconds, want)
		}
	}
}

func TestAgeHeader(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	pushed := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("  tag_ttl: 1h\n", harness.Upstream("reg.test", reg.URL)))
	const tag = "/v2/reg.test/team/app/manifests/v1"
	age := func(r harness.Response, what string) int {
		t.Helper()
		n, err := strconv.Atoi(r.Header.Get("Age"))
		if r.Status != http.StatusOK || err != nil || n < 0 {
			t.Fatalf("%s: %d, Age %q", what, r.Status, r.Header.Get("Age"))
		}
		return n
	}
	if n := age(rc.Do(t, http.MethodGet, tag), "cold GET"); n != 0 {
		t.Fatalf("a cold answer is %d s old; want 0", n)
	}
	age(rc.Do(t, http.MethodGet, "/v2/reg.test/team/app/tags/list"), "cold tags/list")
	time.Sleep(1100 * time.Millisecond)
	if n := age(rc.Do(t, http.MethodHead, tag), "HEAD hit"); n < 1 || n > 3 {
		t.Fatalf("a hit fetched 1.1 s ago says Age %d", n)
	}
	if n := age(rc.Do(t, http.MethodGet, "/v2/reg.test/team/app/tags/list"), "tags/list hit"); n < 1 || n > 3 {
		t.Fatalf("a tags listing fetched 1.1 s ago says Age %d", n)
	}
	// A manifest by digest never goes stale: no Age.
	if r := rc.Do(t, http.MethodGet, "/v2/reg.test/team/app/manifests/"+pushed.Digest); r.Status != http.StatusOK || r.Header.Get("Age") != "" {
		t.Fatalf("by digest: %d, Age %q; want none", r.Status, r.Header.Get("Age"))
	}
}
