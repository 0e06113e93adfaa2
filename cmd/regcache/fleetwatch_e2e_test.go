package main

// Watches in a fleet: three replicas sharing Redis, each with the same watch: list and the
// same webhook, cost upstream one HEAD per watched tag per TTL between them (the fleet lock
// and the shared tag entries make the replicas that come second read the first one's
// answer), and a move is one event in every replica's stream and one delivery per hook.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/cache/redistest"
	"regcache/internal/feed"
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
	// 100 tags a TTL want 50 looks a second, more than budget: auto's 10: a budget that
	// allows them (budgets are TestBudgetBoundsWatches's).
	cfg := harness.Config(fmt.Sprintf("  tag_ttl: %s\n  redis:\n    addr: %s\n    timeout: 2s\n", ttl, rs.Addr),
		harness.Upstream("reg.test", reg.URL, "budget: {requests: 200, per: 1s}")) +
		harness.Block("watch", "- repository: reg.test/team/app", `  tags: '^w\d+$'`)
	var mu sync.Mutex
	deliveries := map[string]int{} // by X-Regcache-Delivery
	digests := map[string]string{} // tag -> digest delivered
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e feed.Event
		if err := json.NewDecoder(r.Body).Decode(&e); err != nil {
			t.Errorf("delivery: %v", err)
		}
		mu.Lock()
		deliveries[r.Header.Get("X-Regcache-Delivery")]++
		digests[e.Tag] = e.Digest
		mu.Unlock()
	}))
	defer receiver.Close()
	cfg += harness.Block("events", "webhooks:", "  - name: ci", "    url: "+receiver.URL)
	var reps []*harness.Instance
	for range 3 {
		reps = append(reps, startReplica(t, cfg))
	}
	waitFor(t, "the first looks", func() bool { return reg.Count(http.MethodHead, "manifest") >= tags })

	// Ten tags move upstream, with no client asking.
	moved := map[string]string{}
	for i := range 10 {
		tag := fmt.Sprintf("w%d", i*10)
		moved[tag] = reg.PushImage(t, "team/app", tag, types.OCIManifestSchema1).Digest
	}
	for i, rc := range reps {
		var list struct {
			Events []feed.Event `json:"events"`
		}
		for deadline := time.Now().Add(3 * ttl); ; time.Sleep(50 * time.Millisecond) {
			r := rc.Do(t, http.MethodGet, "/api/v1/events?format=json&type=tag.changed")
			if err := json.Unmarshal(r.Body, &list); err != nil {
				t.Fatal(err)
			}
			if len(list.Events) >= len(moved) || time.Now().After(deadline) {
				break
			}
		}
		seen := map[string]bool{}
		for _, e := range list.Events {
			if moved[e.Tag] != e.Digest || seen[e.Tag] {
				t.Fatalf("replica %d: event %+v (seen before: %v); want each of the 10 moves once", i, e, seen[e.Tag])
			}
			seen[e.Tag] = true
		}
		if len(seen) != len(moved) {
			t.Fatalf("replica %d: %d of the 10 moves in its stream: %+v", i, len(seen), list.Events)
		}
	}
	waitFor(t, "the deliveries", func() bool { mu.Lock(); defer mu.Unlock(); return len(digests) >= len(moved) })
	time.Sleep(500 * time.Millisecond) // a second delivery of any would have come by now
	mu.Lock()
	for id, n := range deliveries {
		if n != 1 {
			t.Errorf("delivery %s came %d times; want once for the fleet", id, n)
		}
	}
	if len(deliveries) != len(moved) {
		t.Errorf("%d deliveries; want the 10 moves, once each for the fleet", len(deliveries))
	}
	for tag, d := range moved {
		if digests[tag] != d {
			t.Errorf("delivered %s -> %s; want %s", tag, digests[tag], d)
		}
	}
	mu.Unlock()

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
