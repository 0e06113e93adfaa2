package main

// Watches in a fleet: three replicas sharing Redis, each with the same watch: list, cost
// upstream one HEAD per watched tag per TTL between them (the fleet lock and the shared tag
// entries make the replicas that come second read the first one's answer).

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/cache/redistest"
	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

func TestFleetWatches(t *testing.T) {
	if redistest.Binary() == "" {
		redistest.Skip(t)
	}
	const tags, ttl = 100, 2 * time.Second
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.Bearer)
	for i := range tags {
		reg.PushImage(t, "team/app", fmt.Sprintf("w%d", i), types.OCIManifestSchema1)
	}
	cfg := harness.Config(fmt.Sprintf("  tag_ttl: %s\n  redis:\n    addr: %s\n    timeout: 2s\n", ttl, rs.Addr),
		harness.Upstream("reg.test", reg.URL)) +
		harness.Block("watch", "- repository: reg.test/team/app", `  tags: '^w\d+$'`)
	var reps []*harness.Instance
	for range 3 {
		reps = append(reps, startReplica(t, cfg))
	}
	waitFor(t, "the first looks", func() bool { return reg.Count(http.MethodHead, "manifest") >= tags })

	// Over three TTLs each tag goes stale three times: at most four looks upstream each
	// (one may straddle the window's edges), whichever replica makes them.
	reg.ResetCounts()
	time.Sleep(3 * ttl)
	heads := reg.Count(http.MethodHead, "manifest")
	if heads > 4*tags || heads < tags {
		t.Fatalf("%d HEADs in 3 TTLs for %d tags watched by 3 replicas; want one per tag per TTL for the fleet (at most %d)",
			heads, tags, 4*tags)
	}
	if n := reg.Count(http.MethodGet, "manifest"); n != 0 {
		t.Fatalf("%d manifest GETs; watches HEAD", n)
	}
	if n := reg.Count(http.MethodGet, "tags"); n > 4 {
		t.Fatalf("%d tags listings in 3 TTLs; want one per TTL for the fleet", n)
	}
	t.Logf("%d HEADs, %d listings in 3 TTLs for %d tags on 3 replicas", heads, reg.Count(http.MethodGet, "tags"), tags)
}
