package main

// Watches: a watched tag is revalidated every tag TTL with no client asking, so a move
// upstream reaches the change feed on its own; a watched repository's listing turns tags
// that appear or go into tag.created and tag.deleted events.

import (
	"net/http"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/feed"
	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5 s", what)
		}
	}
}

func TestWatchTagWithoutClients(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	first := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("  tag_ttl: 300ms\n", harness.Upstream("reg.test", reg.URL))+
		harness.Block("watch", "- image: reg.test/team/app:v1"))
	events, stop := subscribe(t, rc, "", "")
	defer stop()
	waitFor(t, "the first look", func() bool { return reg.Count(http.MethodHead, "manifest") >= 1 })
	noEvent(t, events, "the first look records where the tag points")

	second := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	moved := time.Now()
	e := nextEvent(t, events, "the move, with no client asking")
	// Within one TTL (300 ms), plus the spread of at most a tenth of it and the HEAD's own
	// time: a bound for a loaded machine, well short of any retry interval.
	if d := time.Since(moved); d > 3*time.Second {
		t.Fatalf("the move reached the stream %v after it; want about one tag_ttl (300ms)", d)
	} else {
		t.Logf("the move reached the stream %v after it (tag_ttl 300ms)", d)
	}
	if e.Type != feed.TagChanged || e.Image != "reg.test/team/app:v1" || e.Digest != second.Digest || e.PreviousDigest != first.Digest {
		t.Fatalf("event %+v; want v1 moved from %s to %s", e, first.Digest, second.Digest)
	}
	// A move back is an event too.
	reg.PutManifest(t, "team/app", "v1", first.MediaType, first.Body)
	if e := nextEvent(t, events, "the move back"); e.Digest != first.Digest || e.PreviousDigest != second.Digest {
		t.Fatalf("move back: %+v", e)
	}

	// The cost: one HEAD per TTL (300 ms, put off by up to 30 ms), never a GET.
	reg.ResetCounts()
	time.Sleep(1500 * time.Millisecond)
	if n := reg.Count(http.MethodHead, "manifest"); n < 2 || n > 6 {
		t.Fatalf("%d HEADs in 1.5 s for one tag watched with tag_ttl 300ms; want about 5 (at most 6)", n)
	}
	if n := reg.Count(http.MethodGet, "manifest"); n != 0 {
		t.Fatalf("a watch sent %d manifest GETs; a HEAD tells where a tag points", n)
	}
	m := rc.Metrics(t)
	if m[`regcache_watch_tags{upstream="reg.test"}`] != 1 || m[`regcache_watch_revalidations_total{upstream="reg.test"}`] < 3 {
		t.Fatalf("watch metrics: tags %v, revalidations %v", m[`regcache_watch_tags{upstream="reg.test"}`],
			m[`regcache_watch_revalidations_total{upstream="reg.test"}`])
	}
}

func TestWatchRepositoryCreatedDeleted(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	v1 := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	v2 := reg.PushImage(t, "team/app", "v2", types.OCIManifestSchema1)
	reg.PushImage(t, "team/app", "latest", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("  tag_ttl: 300ms\n", harness.Upstream("reg.test", reg.URL))+
		harness.Block("watch", "- repository: reg.test/team/app", `  tags: '^v\d+$'`))
	events, stop := subscribe(t, rc, "", "")
	defer stop()
	waitFor(t, "the first listing and looks", func() bool {
		return reg.Count(http.MethodGet, "tags") >= 1 && reg.Count(http.MethodHead, "manifest") >= 2
	})
	noEvent(t, events, "the first listing records the tags")
	if n := rc.Metric(t, `regcache_watch_tags{upstream="reg.test"}`); n != 2 {
		t.Fatalf("%v tags watched; want v1 and v2 (latest does not match)", n)
	}

	v3 := reg.PushImage(t, "team/app", "v3", types.OCIManifestSchema1)
	reg.PushImage(t, "team/app", "nightly", types.OCIManifestSchema1) // not matching: no event
	e := nextEvent(t, events, "v3 created")
	if e.Type != feed.TagCreated || e.Image != "reg.test/team/app:v3" || e.Tag != "v3" || e.Digest != v3.Digest ||
		e.PreviousDigest != "" || e.MediaType != v3.MediaType {
		t.Fatalf("event %+v; want v3 created at %s", e, v3.Digest)
	}

	reg.DeleteTag(t, "team/app", "v1")
	if e := nextEvent(t, events, "v1 deleted"); e.Type != feed.TagDeleted || e.Tag != "v1" || e.Digest != v1.Digest {
		t.Fatalf("event %+v; want v1 deleted (it pointed at %s)", e, v1.Digest)
	}
	moved := reg.PushImage(t, "team/app", "v2", types.OCIManifestSchema1)
	if e := nextEvent(t, events, "v2 moved"); e.Type != feed.TagChanged || e.Tag != "v2" || e.Digest != moved.Digest || e.PreviousDigest != v2.Digest {
		t.Fatalf("event %+v; want v2 moved from %s to %s", e, v2.Digest, moved.Digest)
	}
	noEvent(t, events, "nothing else changed")
	if n := rc.Metric(t, `regcache_watch_tags{upstream="reg.test"}`); n != 2 {
		t.Fatalf("%v tags watched; want v2 and v3", n)
	}
}

// TestWatchWaitsOnSpentRateLimit: once upstream says no pulls remain, a watch sends
// nothing (not even a free HEAD) until the guard's hold has passed; clients are not held.
func TestWatchWaitsOnSpentRateLimit(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	reg.SetFault(registrytest.WithHeaders("RateLimit-Limit", "100;w=21600", "RateLimit-Remaining", "0;w=21600"))
	rc := startRegcache(t, harness.Config("  tag_ttl: 200ms\n", harness.Upstream("reg.test", reg.URL))+
		harness.Block("watch", "- image: reg.test/team/app:v1"))
	waitFor(t, "the first look", func() bool { return reg.Count(http.MethodHead, "manifest") >= 1 })
	time.Sleep(time.Second) // five TTLs
	if n := reg.Count(http.MethodHead, "manifest"); n != 1 {
		t.Fatalf("%d HEADs in five TTLs after upstream said 0 remaining; want the first look alone", n)
	}
	if w := rc.Metric(t, `regcache_watch_waits_total{upstream="reg.test"}`); w < 1 {
		t.Fatalf("regcache_watch_waits_total %v; want the looks put off counted", w)
	}
	// A client still revalidates on demand: the rate-limit guard, not the watch, decides.
	if r := rc.Do(t, http.MethodHead, "/v2/reg.test/team/app/manifests/v1"); r.Status != http.StatusOK || reg.Count(http.MethodHead, "manifest") != 2 {
		t.Fatalf("client HEAD: %d, %d upstream HEADs", r.Status, reg.Count(http.MethodHead, "manifest"))
	}
}
