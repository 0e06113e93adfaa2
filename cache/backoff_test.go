package cache

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/upstream"
	"regcache/upstream/registrytest"
)

func TestBackoffStep(t *testing.T) {
	for _, tc := range []struct {
		base time.Duration
		n    int
		ttl  time.Duration
		want time.Duration
	}{
		// The example: tag_ttl 30s, error_backoff 5s: 5, 10, 20, then 30 s.
		{5 * time.Second, 1, 30 * time.Second, 5 * time.Second},
		{5 * time.Second, 2, 30 * time.Second, 10 * time.Second},
		{5 * time.Second, 3, 30 * time.Second, 20 * time.Second},
		{5 * time.Second, 4, 30 * time.Second, 30 * time.Second},
		{5 * time.Second, 1000, 30 * time.Second, 30 * time.Second},
		{5 * time.Second, 1000, 24 * time.Hour, upstream.MaxErrorBackoff},
		{time.Minute, 1, 30 * time.Second, 30 * time.Second},
		{0, 5, time.Minute, 0},
		{5 * time.Second, 3, 0, 0},
	} {
		if got := backoffStep(tc.base, tc.n, tc.ttl); got != tc.want {
			t.Errorf("backoffStep(%v, %d, %v) = %v, want %v", tc.base, tc.n, tc.ttl, got, tc.want)
		}
	}
}

// manifestRequests counts the manifest requests that reached reg.
func manifestRequests(reg *registrytest.Registry) int {
	return reg.Count(http.MethodHead, "manifest") + reg.Count(http.MethodGet, "manifest")
}

// A stale tag whose revalidation failed is served stale without asking upstream until its
// backoff has passed, then asked once, the backoff doubling; upstream back (and retagged),
// the first revalidation after the backoff finds the new digest.
func TestTagBackoffWhileUpstreamFails(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	old := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	const ttl, base = 500 * time.Millisecond, 150 * time.Millisecond
	c, o := newLocal(t, reg, Config{MaxStale: time.Hour, RevalidateWait: 5 * time.Second, ErrorBackoff: base}, ttl)
	ctx := context.Background()
	ask := func(what string, wantStatus Status) Answer {
		t.Helper()
		a, err := c.Manifest(ctx, o, "team/app", "v1", true)
		if err != nil || a.Status != wantStatus {
			t.Fatalf("%s: %v %v, want %v", what, a.Status, err, wantStatus)
		}
		return a
	}
	ask("warm", Miss)
	time.Sleep(ttl + 50*time.Millisecond)

	reg.SetFault(registrytest.Status(http.StatusInternalServerError))
	reg.ResetCounts()
	start := time.Now()
	for range 10 {
		if a := ask("while upstream fails", Stale); string(a.Digest) != old.Digest {
			t.Fatalf("stale answer %s, want %s", a.Digest, old.Digest)
		}
	}
	if time.Since(start) < base {
		if n := manifestRequests(reg); n != 1 {
			t.Fatalf("10 stale answers within the backoff cost %d upstream requests, want 1", n)
		}
		if n := o.StaleBackoff(); n != 9 {
			t.Fatalf("StaleBackoff = %d, want 9", n)
		}
	}

	// After the backoff: asked once more; the next backoff is twice as long.
	time.Sleep(time.Until(start.Add(base + 50*time.Millisecond)))
	reg.ResetCounts()
	second := time.Now()
	ask("after the first backoff", Stale)
	ask("right after", Stale)
	if n := manifestRequests(reg); n != 1 {
		t.Fatalf("after the first backoff: %d upstream requests, want 1", n)
	}
	time.Sleep(time.Until(second.Add(base + 50*time.Millisecond))) // past base, not 2*base
	ask("inside the doubled backoff", Stale)
	if n := manifestRequests(reg); n != 1 && time.Since(second) < 2*base {
		t.Fatalf("inside the doubled backoff: %d upstream requests, want 1", n)
	}

	// Upstream recovers and is retagged: the first revalidation after the backoff serves
	// the new digest.
	reg.SetFault(nil)
	cur := reg.PushImage(t, "team/app", "v1", types.DockerManifestSchema2)
	time.Sleep(time.Until(second.Add(2*base + 150*time.Millisecond)))
	if a := ask("after recovery", Miss); string(a.Digest) != cur.Digest {
		t.Fatalf("after recovery: %s, want the new %s", a.Digest, cur.Digest)
	}
	if a := ask("then", Hit); string(a.Digest) != cur.Digest {
		t.Fatalf("then: %s", a.Digest)
	}
}

// A 429's Retry-After is the least backoff, whatever error_backoff and the TTL say.
func TestTagBackoffHonoursRetryAfter(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	const ttl = 300 * time.Millisecond
	c, o := newLocal(t, reg, Config{MaxStale: time.Hour, RevalidateWait: 5 * time.Second, ErrorBackoff: 50 * time.Millisecond}, ttl)
	ctx := context.Background()
	if _, err := c.Manifest(ctx, o, "team/app", "v1", false); err != nil {
		t.Fatal(err)
	}
	time.Sleep(ttl + 50*time.Millisecond)
	reg.SetFault(registrytest.RateLimited(2 * time.Second))
	failedAt := time.Now()
	if a, err := c.Manifest(ctx, o, "team/app", "v1", false); err != nil || a.Status != Stale {
		t.Fatalf("429: %v %v", a.Status, err)
	}
	time.Sleep(2 * ttl) // past the TTL and error_backoff, inside Retry-After
	before := o.StaleBackoff()
	if a, err := c.Manifest(ctx, o, "team/app", "v1", false); err != nil || a.Status != Stale {
		t.Fatalf("inside Retry-After: %v %v", a.Status, err)
	}
	if o.StaleBackoff() != before+1 && time.Since(failedAt) < 2*time.Second {
		t.Fatal("inside the 429's Retry-After the tag was not held by its backoff")
	}
}

// A HEAD stored the tag without its body; while the backoff holds, a GET is not sent
// upstream for the body either: it gets the failure.
func TestTagBackoffFetchesNoBody(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	const ttl = 300 * time.Millisecond
	c, o := newLocal(t, reg, Config{MaxStale: time.Hour, RevalidateWait: 5 * time.Second, ErrorBackoff: time.Minute}, ttl)
	ctx := context.Background()
	if _, err := c.Manifest(ctx, o, "team/app", "v1", false); err != nil {
		t.Fatal(err)
	}
	time.Sleep(ttl + 50*time.Millisecond)
	reg.SetFault(registrytest.Status(http.StatusBadGateway))
	reg.ResetCounts()
	if a, err := c.Manifest(ctx, o, "team/app", "v1", false); err != nil || a.Status != Stale {
		t.Fatalf("HEAD: %v %v", a.Status, err)
	}
	for range 3 {
		if _, err := c.Manifest(ctx, o, "team/app", "v1", true); upstream.KindOf(err) != upstream.KindUnavailable {
			t.Fatalf("GET without a body held, in backoff: %v, want the failure", err)
		}
	}
	if n := manifestRequests(reg); n != 1 {
		t.Fatalf("upstream saw %d manifest requests, want the one HEAD", n)
	}
}

// A tags listing has its backoff too.
func TestTagsBackoffWhileUpstreamFails(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushTags(t, "team/app", numberedTags(5))
	const ttl = 300 * time.Millisecond
	c, o := tagsCache(t, reg, ttl, Config{MaxStale: time.Hour, ErrorBackoff: 10 * time.Second})
	ctx := context.Background()
	if _, st, err := c.Tags(ctx, o, "team/app", TagsRequest{N: 100}, time.Now()); err != nil || st != Miss {
		t.Fatalf("warm: %v %v", st, err)
	}
	time.Sleep(ttl + 50*time.Millisecond)
	reg.SetFault(registrytest.Status(http.StatusServiceUnavailable))
	reg.ResetCounts()
	for i := range 10 {
		p, st, err := c.Tags(ctx, o, "team/app", TagsRequest{N: 100}, time.Now())
		if err != nil || st != Stale || p.More {
			t.Fatalf("request %d while upstream fails: %v %v more=%v", i, st, err, p.More)
		}
	}
	if n := reg.Count(http.MethodGet, "tags"); n != 1 {
		t.Fatalf("10 stale listings cost %d upstream pages, want 1", n)
	}
	if n := o.StaleBackoff(); n != 9 {
		t.Fatalf("StaleBackoff = %d, want 9", n)
	}
}
