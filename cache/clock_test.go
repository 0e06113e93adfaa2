package cache

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/cache/redistest"
	"regcache/upstream/registrytest"
)

// A tag's freshness counts from when upstream answered, not from when the request began:
// an upstream slower than tag_ttl must not hand back entries already stale, which the next
// request would revalidate instead of hitting.
func TestEntryFreshFromUpstreamAnswer(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	c, o := newLocal(t, reg, Config{MaxStale: time.Hour, RevalidateWait: 2 * time.Second}, 300*time.Millisecond)
	reg.SetFault(registrytest.Delay(400 * time.Millisecond))
	if a, err := c.Manifest(context.Background(), o, "team/app", "v1", true); err != nil || a.Status != Miss {
		t.Fatalf("first: %v %v", a.Status, err)
	}
	reg.ResetCounts()
	a, err := c.Manifest(context.Background(), o, "team/app", "v1", true)
	if err != nil || a.Status != Hit || reg.Total() != 0 {
		t.Fatalf("right after the miss: %v, %d upstream requests (%v); want HIT and none", a.Status, reg.Total(), err)
	}
}

// Another replica's entry is judged by the clock as it is read, not by a request's older
// clock read (a long fleet wait, or a request that began long ago): a sound entry is
// neither taken for clock skew and deleted from Redis, nor asked of upstream again.
func TestFleetEntryJudgedByTheClockNow(t *testing.T) {
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	a, b := newReplica(t, reg, rs.Addr, time.Second), newReplica(t, reg, rs.Addr, time.Second)
	b.get(t, "v1", false) // b shares a fresh entry
	before := manifests(reg)
	if _, err := a.c.Load(context.Background(), Request{Origin: a.o, Repo: "team/app", Ref: "v1", Now: time.Now().Add(-90 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	if g := a.c.RedisStats().Garbage; g != 0 || manifests(reg) != before {
		t.Fatalf("a sound shared entry counted as garbage (%d), upstream asked again (%d -> %d)", g, before, manifests(reg))
	}
}
