package main

// Refresh-ahead, end to end: a tag in steady use is refreshed in the background before it
// expires, so that every answer is a HIT and upstream sees about one HEAD per TTL; a tag
// asked once is left to expire; background GETs (the new body of a moved tag) take at
// most budget_share of the limit upstream announces, over the window it announces.

import (
	"net/http"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// TestRefreshAheadKeepsHotTagsHit: a tag asked 20 times a second for 5 TTLs (tag_ttl 2s),
// by HEAD and GET in turn: every answer after the first is a HIT, upstream sees one GET and
// about one HEAD per TTL, and a tag asked once in the same time sees no refresh.
func TestRefreshAheadKeepsHotTagsHit(t *testing.T) {
	t.Parallel()
	const ttl, rate, ttls = 2 * time.Second, 20, 5
	reg := registrytest.New(t, registrytest.Bearer)
	hot := reg.PushImage(t, "team/app", "hot", types.OCIManifestSchema1)
	reg.PushImage(t, "team/app", "once", types.OCIManifestSchema1)
	rec := harness.Record(reg)
	rc := startRegcacheWith(t, harness.Config("  tag_ttl: 2s\n", harness.Upstream("reg.test", reg.URL)), harness.Options{NoAccessLog: true})

	if r := rc.Do(t, http.MethodHead, "/v2/reg.test/team/app/manifests/once"); r.Status != http.StatusOK {
		t.Fatalf("once: %d", r.Status)
	}
	path := "/v2/reg.test/team/app/manifests/hot"
	tick := time.NewTicker(time.Second / rate)
	defer tick.Stop()
	var misses []string
	n := 0
	for end := time.Now().Add(ttls * ttl); time.Now().Before(end); <-tick.C {
		method := http.MethodGet
		if n%2 == 1 {
			method = http.MethodHead
		}
		r := rc.Do(t, method, path)
		if r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != hot.Digest {
			t.Fatalf("answer %d: %d %s", n, r.Status, r.Header.Get("Docker-Content-Digest"))
		}
		if x := r.Header.Get("X-Cache"); n > 0 && x != "HIT" {
			misses = append(misses, time.Now().Format("15:04:05.000")+" "+method+" "+x)
		}
		n++
	}
	if len(misses) > 0 {
		t.Fatalf("%d of %d answers after the first were not HITs: %v", len(misses), n-1, misses)
	}
	var heads, gets, once int
	for _, s := range rec.Manifests() {
		switch s.String() {
		case harness.ManifestRequest(http.MethodHead, "team/app", "hot"):
			heads++
		case harness.ManifestRequest(http.MethodGet, "team/app", "hot"):
			gets++
		case harness.ManifestRequest(http.MethodHead, "team/app", "once"):
			once++
		default:
			t.Errorf("unexpected upstream request %s", s)
		}
	}
	// A refresh every 50–90% of a TTL (80–90% but for a slow fetch): in five TTLs, five
	// to seven HEADs, and never one per client request.
	if gets != 1 || heads < ttls-1 || heads > 2*ttls {
		t.Fatalf("%d answers over %d TTLs cost upstream %d GETs and %d HEADs of the tag; want the first GET, and about one HEAD per TTL",
			n, ttls, gets, heads)
	}
	if once != 1 {
		t.Fatalf("the tag asked once cost %d HEADs in %d TTLs; want its own, and no refresh", once, ttls)
	}
	if m := rc.Metric(t, `regcache_background_requests_total{reason="refresh",upstream="reg.test"}`); int(m) != heads {
		t.Fatalf("regcache_background_requests_total{reason=refresh} %v; upstream saw %d refresh HEADs", m, heads)
	}
	t.Logf("%d answers over %d TTLs, all HITs after the first: %d upstream HEADs, %d GET", n, ttls, heads, gets)
}

// TestRefreshAheadGETsTakeTheAnnouncedShare: upstream announces RateLimit-Limit 4;w=60, so
// under budget: auto background GETs may take 2 of them a minute. A tag clients GET moves
// once a TTL: the first two refreshes that find it moved fetch the new body (the client's
// next GET is a HIT), the later ones may not (the client's GET fetches it: a MISS, never
// refused), and each body is fetched once either way.
func TestRefreshAheadGETsTakeTheAnnouncedShare(t *testing.T) {
	t.Parallel()
	const ttl = time.Second
	reg := registrytest.New(t, registrytest.NoAuth)
	first := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	rec := harness.Record(reg)
	rec.Set(registrytest.WithHeaders("RateLimit-Limit", "4;w=60"))
	rc := startRegcacheWith(t, harness.Config("  tag_ttl: 1s\n", harness.Upstream("reg.test", reg.URL)), harness.Options{NoAccessLog: true})
	path := "/v2/reg.test/team/app/manifests/v1"
	if r := rc.Do(t, http.MethodGet, path); r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != first.Digest {
		t.Fatalf("first GET: %d", r.Status)
	}
	if l, w := rc.Metric(t, `regcache_budget_limit{kind="pulls",upstream="reg.test"}`), rc.Metric(t, `regcache_budget_window_seconds{kind="pulls",upstream="reg.test"}`); l != 2 || w != 60 {
		t.Fatalf("budget for background GETs: %v per %vs; want 50%% of the announced 4, per the announced 60s", l, w)
	}
	var firstSeen []string // X-Cache of each new digest's first answer
	current := first.Digest
	const moves = 4
	for m := 0; m < moves; m++ {
		moved := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
		for deadline := time.Now().Add(3 * ttl); ; time.Sleep(25 * time.Millisecond) {
			r := rc.Do(t, http.MethodGet, path)
			if r.Status != http.StatusOK {
				t.Fatalf("move %d: %d %s", m, r.Status, r.Body)
			}
			d := r.Header.Get("Docker-Content-Digest")
			if d == moved.Digest {
				firstSeen = append(firstSeen, r.Header.Get("X-Cache"))
				current = d
				break
			}
			if d != current || time.Now().After(deadline) {
				t.Fatalf("move %d: digest %s after %v; want %s, then %s", m, d, 3*ttl, current, moved.Digest)
			}
		}
	}
	want := []string{"HIT", "HIT", "MISS", "MISS"}
	for i, x := range firstSeen {
		if x != want[i] {
			t.Fatalf("the moves' first answers: %v; want %v (two background GETs a minute, then the clients')", firstSeen, want)
		}
	}
	byDigest := 0
	for _, s := range rec.Manifests() {
		if s.Method == http.MethodGet && s.Path != "/v2/team/app/manifests/v1" {
			byDigest++
		}
	}
	if byDigest != moves {
		t.Fatalf("%d GETs by digest for %d moves; want each new body fetched once", byDigest, moves)
	}
	if s := rc.Metric(t, `regcache_budget_spent{kind="pulls",upstream="reg.test"}`); s != 2 {
		t.Fatalf("regcache_budget_spent{kind=pulls} %v; want the 2 the share allows", s)
	}
}
